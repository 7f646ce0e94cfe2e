"""One /metrics for a service served by several processes (the LM front processes,
lm_fronts.py): this process's registry plus the latest snapshot of each other
process's, summed sample by sample.

Counters, histograms and gauges of the same name and labels add up (calls in
flight, requests finished, latency buckets); a *_created sample (when a series
began) takes the earliest. A process that stops leaves its last snapshot in the
sum, so counters never go back.

Some families are also given per process (by_process): a counter's or gauge's
samples summed within each process into a family of its own with a `process`
label ("0": this process; a front: its index), so an uneven share of the calls
among the processes shows (the port is shared by connection, not by call). A
source given as (index, pid) counts under its index: a front started again in
the place of one that died adds to its predecessor's last snapshot, of which
only the counters and histograms still count (its gauges, such as its calls
in flight, went with it)."""
from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample


def merge_families(collections: list[list[Metric]]) -> list[Metric]:
    """Metric families of the same name merged: samples with the same name and labels summed (_created: the
    earliest). The first collection's order and documentation are kept; families only later ones have follow."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict] = {}
    for families in collections:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            by_key = values[family.name]
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key not in by_key:
                    by_key[key] = s
                elif s.name.endswith("_created"):
                    by_key[key] = by_key[key]._replace(value=min(by_key[key].value, s.value))
                else:
                    by_key[key] = by_key[key]._replace(value=by_key[key].value + s.value)
    for name, family in merged.items():
        family.samples = [Sample(s.name, s.labels, s.value, s.timestamp, s.exemplar) for s in values[name].values()]
    return list(merged.values())


def _slot(source):
    """The place a source counts under: its index where it is given as (index, pid)."""
    return source[0] if isinstance(source, tuple) else source


def per_process(name: str, documentation: str, sources: list[tuple[object, list[Metric]]], source_family: str) -> \
        Metric | None:
    """`source_family` (a counter or gauge) of each (process, families) as one family `name`: each process's
    samples summed (a counter's _total samples only) into one sample labelled process=<process>."""
    kind, totals = None, {}
    for source, families in sources:
        process = _slot(source)
        for family in families:
            if family.name != source_family or family.type not in ("counter", "gauge"):
                continue
            kind = family.type
            suffix = "_total" if kind == "counter" else ""
            totals[process] = totals.get(process, 0.0) + sum(s.value for s in family.samples
                                                             if s.name == family.name + suffix)
    if kind is None:
        return None
    out = Metric(name, documentation, kind)
    suffix = "_total" if kind == "counter" else ""
    out.samples = [Sample(name + suffix, {"process": str(p)}, v, None, None) for p, v in totals.items()]
    return out


class MergedRegistry:
    """What the /metrics endpoint collects from: `own` and the snapshots set with update(). by_process: {name of
    a family to give per process: (name of the per-process family, its documentation)}."""

    def __init__(self, own: CollectorRegistry, by_process: dict[str, tuple[str, str]] | None = None):
        self.own = own
        self.by_process = by_process or {}
        self._snapshots: dict[object, list[Metric]] = {}
        self._lock = threading.Lock()

    def update(self, source, families: list[Metric]) -> None:
        """The latest snapshot of `source` (a process), replacing its previous one."""
        with self._lock:
            self._snapshots[source] = families

    def collect(self):
        with self._lock:
            others = list(self._snapshots.items())
        latest = {_slot(source): source for source, _ in others}  # a slot's latest process (insertion order)
        others = [(source, families if latest[_slot(source)] == source else
                   [f for f in families if f.type != "gauge"]) for source, families in others]
        own = list(self.own.collect())
        merged = merge_families([own, *(families for _, families in others)])
        sources = [(0, own), *others]
        for source_family, (name, documentation) in self.by_process.items():
            family = per_process(name, documentation, sources, source_family)
            if family is not None:
                merged.append(family)
        return merged

    def restricted_registry(self, names):
        """For /metrics?name[]=...: only the families (or their samples) so named."""
        wanted = set(names)
        merged = self

        class Restricted:
            def collect(self):
                for family in merged.collect():
                    samples = [s for s in family.samples if s.name in wanted]
                    if family.name in wanted or samples:
                        if family.name not in wanted:
                            family.samples = samples
                        yield family

        return Restricted()

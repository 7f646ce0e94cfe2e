#!/usr/bin/env python3
"""Where a service process's threads spend their samples, from `py-spy record --format raw --threads` files
(what `bench/serve.py --py-spy-record` writes): per thread, its share of the samples, the frames it was in most
(self: the innermost frame) and the functions most samples passed through (inclusive, each counted once a stack).

    python3 bench/pyspy_summary.py serve/logs/*_c256_lm.pyspy.folded --thread MainThread --top 25
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# "thread (12526): MainThread;<module> (x.py:6);spin (x.py:5) 148", or "thread (12526);..." where the thread has no
# Python name; a line without the thread part is one thread.
_LINE = re.compile(r"^(?:thread \((?P<tid>\d+)\)(?:: (?P<name>[^;]*))?;)?(?P<stack>.*) (?P<count>\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")


def function_of(frame: str) -> str:
    """A frame without its line number: 'spin (x.py:5)' -> 'spin (x.py)'."""
    return _FRAME_LINE.sub(")", frame)


@dataclass
class ThreadProfile:
    label: str
    samples: int = 0
    self_frames: Counter = field(default_factory=Counter)
    inclusive: Counter = field(default_factory=Counter)


def parse(lines) -> dict[str, ThreadProfile]:
    threads: dict[str, ThreadProfile] = {}
    for raw in lines:
        raw = raw.rstrip("\n")
        m = _LINE.match(raw)
        if not m or not m["stack"]:
            continue
        label = f"{m['name'] or 'thread'} ({m['tid']})" if m["tid"] else "all threads"
        t = threads.setdefault(label, ThreadProfile(label))
        n = int(m["count"])
        frames = m["stack"].split(";")
        t.samples += n
        t.self_frames[frames[-1]] += n
        for fn in {function_of(f) for f in frames}:
            t.inclusive[fn] += n
    return threads


def summary(threads: dict[str, ThreadProfile], top: int = 15, thread: str | None = None) -> str:
    total = sum(t.samples for t in threads.values()) or 1
    chosen = [t for t in sorted(threads.values(), key=lambda t: -t.samples) if thread is None or thread in t.label]
    out = [f"{total} samples over {len(threads)} thread(s)", ""]
    for t in chosen:
        out.append(f"## {t.label}: {t.samples} samples ({100 * t.samples / total:.1f} %)")
        out.append("")
        out.append("| self % | frame |")
        out.append("|---|---|")
        out += [f"| {100 * n / t.samples:.1f} | {f} |" for f, n in t.self_frames.most_common(top)]
        out.append("")
        out.append("| inclusive % | function |")
        out.append("|---|---|")
        out += [f"| {100 * n / t.samples:.1f} | {f} |" for f, n in t.inclusive.most_common(top)]
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--thread", default=None, help="only threads whose name or id contains this")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    for path in a.files:
        print(f"# {path}\n")
        with path.open() as f:
            print(summary(parse(f), a.top, a.thread))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where one kernel's warps wait, instruction by instruction: reads the CSV of Nsight Compute's source page
(`ncu --import R.ncu-rep --page source --csv --print-source sass`, from a profile with the SourceCounters
section) and prints the SASS instructions holding the most warp-stall samples, each with its share of all
samples, then the samples summed by opcode; with --listing, every instruction that holds samples in address
order instead (its offset in the kernel, samples, executions, its two largest stall reasons), with the samples
summed by stall reason: where a phase of the kernel begins and what its warps wait on there.

    python3 bench/ncu_source_top.py REPORT_SOURCE.csv[.gz] [--top 40] [--listing]

The columns are found by name (the sample column: the first whose name holds "Warp Stall Sampling (All");
the instruction: "Source"; its address: "Address" where present), so the script refuses a CSV without them
rather than guessing."""
from __future__ import annotations

import argparse
import csv
import gzip
import sys
from collections import Counter


def _number(text: str) -> float:
    text = text.replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return 0.0


def read_rows(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """The header (the first row naming a "Source" column) and the rows after it, as lists of cells."""
    rows = list(csv.reader(lines))
    for i, row in enumerate(rows):
        if "Source" in row:
            return row, [r for r in rows[i + 1:] if len(r) == len(row)]
    raise ValueError("no header row with a 'Source' column: not the CSV of ncu's source page")


def columns(header: list[str]) -> tuple[int, int, int | None]:
    """The indices of the sample column, the instruction ("Source") and its address (None where absent)."""
    sample_cols = [i for i, name in enumerate(header) if "Warp Stall Sampling (All" in name]
    if not sample_cols:
        raise ValueError(f"no 'Warp Stall Sampling (All ...)' column among {header}")
    return sample_cols[0], header.index("Source"), header.index("Address") if "Address" in header else None


def stall_table(header: list[str], rows: list[list[str]]) -> tuple[list[tuple[str, str, float]], float]:
    """(address, instruction, samples) per row with samples, and the total samples."""
    s, src, addr = columns(header)
    table = [(row[addr] if addr is not None else "", row[src].strip(), _number(row[s])) for row in rows]
    table = [t for t in table if t[2] > 0]
    return table, sum(t[2] for t in table)


def opcode(instruction: str) -> str:
    """The mnemonic of a SASS line, without its predicate and modifiers (`@!P0 LDG.E.128 ...` -> LDG)."""
    words = instruction.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def render(table: list[tuple[str, str, float]], total: float, top: int) -> str:
    out = [f"{total:.0f} warp-stall samples over {len(table)} instructions", "",
           "| share | samples | address | instruction |", "|---|---|---|---|"]
    for address, instruction, samples in sorted(table, key=lambda t: -t[2])[:top]:
        out.append(f"| {100 * samples / total:.1f} % | {samples:.0f} | {address} | `{instruction}` |")
    by_op = Counter()
    for _, instruction, samples in table:
        by_op[opcode(instruction)] += samples
    out += ["", "| opcode | share | samples |", "|---|---|---|"]
    out += [f"| {op} | {100 * n / total:.1f} % | {n:.0f} |" for op, n in by_op.most_common(top)]
    return "\n".join(out)


def stall_reasons(header: list[str], row: list[str]) -> Counter:
    """The row's samples by stall reason (the `stall_*` columns, issued or not; the "(Not Issued)" ones left out)."""
    return Counter({name[len("stall_"):]: _number(row[i]) for i, name in enumerate(header)
                    if name.startswith("stall_") and "Not Issued" not in name and _number(row[i]) > 0})


def render_listing(header: list[str], rows: list[list[str]]) -> str:
    """Every instruction with samples, in address order: offset from the kernel's first instruction, samples,
    executions, instruction, its two largest stall reasons; then the samples summed by stall reason."""
    s, src, addr = columns(header)
    execs = header.index("Instructions Executed") if "Instructions Executed" in header else None
    base = int(rows[0][addr], 16) if addr is not None and rows else 0
    out = ["| offset | samples | executed | instruction | top stall reasons |", "|---|---|---|---|---|"]
    totals = Counter()
    for row in rows:
        samples = _number(row[s])
        if samples <= 0:
            continue
        reasons = stall_reasons(header, row)
        totals.update(reasons)
        offset = f"0x{int(row[addr], 16) - base:x}" if addr is not None else ""
        executed = f"{_number(row[execs]):.0f}" if execs is not None else ""
        top = ", ".join(f"{k} {v:.0f}" for k, v in reasons.most_common(2))
        out.append(f"| {offset} | {samples:.0f} | {executed} | `{row[src].strip()}` | {top} |")
    if totals:
        out += ["", "| stall reason | samples |", "|---|---|"]
        out += [f"| {k} | {v:.0f} |" for k, v in totals.most_common()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--listing", action="store_true", help="every instruction with samples, in address order")
    args = ap.parse_args(argv)
    opener = gzip.open if args.csv.endswith(".gz") else open
    with opener(args.csv, "rt", newline="") as f:
        lines = f.read().splitlines()
    try:
        header, rows = read_rows(lines)
        table, total = stall_table(header, rows)
    except ValueError as e:
        print(f"ncu_source_top: {e}", file=sys.stderr)
        return 1
    if total == 0:
        print("ncu_source_top: no warp-stall samples in this CSV", file=sys.stderr)
        return 1
    print(render_listing(header, rows) if args.listing else render(table, total, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())

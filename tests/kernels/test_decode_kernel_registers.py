"""The decode-size w4a16 kernels' register budgets, read from ptxas (no GPU needed, only the CUDA compiler the
library was built with). Every form must fit its blocks an SM without spilling: at 8 ring stages (the default)
three blocks of 256 threads, so at most 80 registers a thread (65,536 / 768 = 85, allocated in steps of 8); at 16
stages two blocks, at most 128. A spill there is a local-memory reload inside the main loop (the compact epilogue
of 2026-12-06 spilled in seven forms of the plain-copies build, the fp16 group-128 one among them, whose 7B layers
ran 0.8-1.1 us slower at M = 1 on the H100, docs/benchmarks/gemm.md), and ptxas moves spills between forms on small
edits elsewhere in the kernel, so each change to it is checked here.

The file is compiled as the build tree configured it (build/CMakeFiles/vlmcore.dir/flags.make: its defines and
include paths, so CMake options such as VLM_W4A16_EVICT_FIRST are those of the library being tested)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
FLAGS = BUILD / "CMakeFiles" / "vlmcore.dir" / "flags.make"
SOURCE = ROOT / "native" / "cuda" / "w4a16_decode.cu"
GEMV_SOURCE = ROOT / "native" / "cuda" / "w4a16_gemv.cu"

# Registers a thread may hold so that the form's blocks an SM still fit (see the module docstring).
MAX_REGISTERS = {8: 80, 16: 128}
ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_90a'")
FORM = re.compile(r"w4a16_decode_kernelI(\w+?)Li(\d+)ELi(\d+)EE")
# The column-tile kernel's forms: activation type, rows, chunks in flight, ring (0 registers, 1 shared memory).
GEMV_FORM = re.compile(r"w4a16_gemv_kernelI(\w+?)Li(\d+)ELi(\d+)ELNS0_4RingE(\d)EE")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def build_cuda_flags() -> tuple[str, list[str]]:
    """The CUDA compiler and the defines and include options the build tree uses, or a skip saying why none."""
    if not FLAGS.exists():
        pytest.skip(f"{FLAGS} is missing: no build tree configured by `make` (CMake's Makefile generator)")
    text = FLAGS.read_text()
    compiler = re.search(r"^# compile CUDA with (\S+)", text, re.M)
    if compiler is None:
        pytest.skip("the build tree was configured without a CUDA compiler: no CUDA sources to check")
    fields = dict(re.findall(r"^(CUDA_DEFINES|CUDA_INCLUDES) = (.*)$", text, re.M))
    return compiler.group(1), (fields.get("CUDA_DEFINES", "").split() + fields.get("CUDA_INCLUDES", "").split())


def ptxas_report(tmp_path: Path, source: Path = SOURCE,
                 form_re: re.Pattern = FORM) -> dict[tuple, tuple[int, int, int]]:
    """A form's template arguments (the activation type, then the integers form_re captures) -> (registers,
    spill-store bytes, spill-load bytes) for every form of the kernel in `source`."""
    nvcc, flags = build_cuda_flags()
    cmd = [nvcc, *flags, "-O3", "-DNDEBUG", "-arch=sm_90a", "--expt-relaxed-constexpr", "-std=c++17", "-cubin",
           "-Xptxas", "-v", str(source), "-o", str(tmp_path / (source.stem + ".cubin"))]
    # From the build directory: the include options name a response file relative to it.
    done = subprocess.run(cmd, cwd=BUILD, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}"
    report, form = {}, None
    for line in done.stderr.splitlines():
        if m := ENTRY.search(line):
            f = form_re.search(m.group(1))
            form = (f.group(1), *(int(x) for x in f.groups()[1:])) if f else None
        elif form and (m := SPILLS.search(line)):
            report[form] = (0, int(m.group(1)), int(m.group(2)))
        elif form and (m := REGISTERS.search(line)):
            _, stores, loads = report[form]
            report[form] = (int(m.group(1)), stores, loads)
            form = None
    return report


def test_every_decode_kernel_form_fits_its_blocks_without_spilling(tmp_path):
    report = ptxas_report(tmp_path)
    # fp16 and bf16, units of 2, 4 and 8 k16 steps, 8 and 16 ring stages.
    assert len(report) == 12, f"expected the decode kernel's 12 forms in ptxas's report, found {sorted(report)}"
    over = {form: r for form, r in report.items() if r[1] or r[2] or r[0] > MAX_REGISTERS[form[2]]}
    lines = [f"{t} U={u} stages={st}: {regs} registers (at most {MAX_REGISTERS[st]}), spill stores {s} B, "
             f"loads {l} B" for (t, u, st), (regs, s, l) in sorted(report.items())]
    assert not over, "decode kernel forms over their register budget:\n" + "\n".join(lines)


def test_the_column_tile_kernel_leaves_registers_for_the_next_kernel(tmp_path):
    """w4a16_gemv.cu: the 8-chunk shared-memory ring's forms of 1 and 2 rows (the batch-1 and batch-2 decode steps)
    fit 64 registers without spilling, so two blocks of 256 threads hold half an SM's register file and the next
    kernel's blocks fit beside them under dependent launch; its 3- and 4-row forms, and the 16-chunk ring's, fit 80
    (the 8-chunk ring's 3-row forms spilling at most 8 bytes: 4 on 2026-12-07, nvcc 13.0; the 16-chunk ones none).
    The 8-chunk register ring's forms fit their 2 blocks an SM (128) without spilling. (The 4-chunk register ring,
    for measuring only, spills 8-16 bytes in some forms: not checked.)"""
    report = ptxas_report(tmp_path, GEMV_SOURCE, GEMV_FORM)
    # fp16 and bf16, 1-4 rows: the register ring of 8 and of 4 chunks, the shared ring of 8 and of 16.
    assert len(report) == 32, f"expected the column-tile kernel's 32 forms in ptxas's report, found {sorted(report)}"
    budget = {(rows, 8, 1): 64 if rows <= 2 else 80 for rows in range(1, 5)}
    budget.update({(rows, 16, 1): 80 for rows in range(1, 5)})
    budget.update({(rows, 8, 0): 128 for rows in range(1, 5)})
    over = []
    for (t, rows, chunks, shared), (regs, stores, loads) in sorted(report.items()):
        limit = budget.get((rows, chunks, shared))
        if limit is None:
            continue
        spill_limit = 8 if (shared, chunks) == (1, 8) and rows > 2 else 0
        if regs > limit or stores > spill_limit or loads > spill_limit:
            over.append(f"{t} rows={rows} chunks={chunks} shared={shared}: {regs} registers (at most {limit}), "
                        f"spill stores {stores} B, loads {loads} B")
    assert not over, "column-tile kernel forms over their register budget:\n" + "\n".join(over)

"""The decode-size w4a16 kernel's register budget, read from ptxas (no GPU needed, only the CUDA compiler the
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

# Registers a thread may hold so that the form's blocks an SM still fit (see the module docstring).
MAX_REGISTERS = {8: 80, 16: 128}
ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_90a'")
FORM = re.compile(r"w4a16_decode_kernelI(\w+?)Li(\d+)ELi(\d+)EE")
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


def ptxas_report(tmp_path: Path) -> dict[tuple[str, int, int], tuple[int, int, int]]:
    """(activation type, unit U, ring stages) -> (registers, spill-store bytes, spill-load bytes) for every form."""
    nvcc, flags = build_cuda_flags()
    cmd = [nvcc, *flags, "-O3", "-DNDEBUG", "-arch=sm_90a", "--expt-relaxed-constexpr", "-std=c++17", "-cubin",
           "-Xptxas", "-v", str(SOURCE), "-o", str(tmp_path / "w4a16_decode.cubin")]
    # From the build directory: the include options name a response file relative to it.
    done = subprocess.run(cmd, cwd=BUILD, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}"
    report, form = {}, None
    for line in done.stderr.splitlines():
        if m := ENTRY.search(line):
            f = FORM.search(m.group(1))
            form = (f.group(1), int(f.group(2)), int(f.group(3))) if f else None
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

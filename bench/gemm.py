"""w4a16 GEMM benchmark: our tensor-core kernel vs torch fp16 (cuBLAS) and
torch's int4 kernel (tinygemm, `_weight_int4pack_mm`), in one run on one GPU.

Method (as the project's anchors): y = x·Wᵀ for one layer; weights rotated
over more than 200 MB so L2 cannot hold them; 20 calls captured in one CUDA
graph; median of 30 replays after 50 ms of untimed ones; time per call.
Floors: bytes that must move at the HBM bandwidth measured in the same run
(device-to-device copy, bytes read + written): fp16 = 2 bytes per weight,
int4 g128 = 0.53125 bytes per weight (4-bit code + fp16 scale and zero per
group of 128). With --read-floor also the time one kernel that only reads
(vlm_stream_read) takes for the layer's packed 4-bit weights and for its fp16
weights under the same method: what a call of those bytes cannot beat with
its launch, ramp and tail, which the bandwidth floors leave out. Torch's
kernels are timed in this process, each M right after the library's, unless
--peers apart times them first in a process of their own (the order of
timings in one process biased bench/cutlass_schedules.py by up to 17 %).

    python bench/gemm.py [--quick] [--ms 1,16] [--read-floor] [--peers inline|apart] [--out-dir DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from vlmserve.awq_format import quantize_rtn  # noqa: E402
from vlmserve.kernels import (dense_decode_gemm, pack_w4a16, stream_read, stream_read_sink,  # noqa: E402
                              w4a16_gemv, w4a16_gemv_k_parts, w4a16_gemv_repack,
                              w4a16_cutlass_built, w4a16_cutlass_engine_takes, w4a16_cutlass_gemm,
                              w4a16_cutlass_prepare, w4a16_cutlass_tiles, w4a16_cutlass_workspace_bytes,
                              w4a16_dequantize, w4a16_gemm, w4a16_dequant_gemm_min_rows, w4a16_wgmma_form,
                              w4a16_wgmma_plan, w4a16_workspace_bytes)
from run_info import library_settings, settings_line  # noqa: E402  (bench/, the script's own folder)

LAYERS = {  # name: (N, K)
    "2B.qkv": (4096, 2048), "2B.o": (2048, 2048), "2B.gate_up": (16384, 2048), "2B.down": (2048, 8192),
    "7B.qkv": (12288, 4096), "7B.o": (4096, 4096), "7B.gate_up": (22016, 4096), "7B.down": (4096, 11008),
}
MS = (1, 16, 64, 256, 2048)
TARGETS_7B = {1: 3.3, 16: 3.0, 64: 1.8, 256: 1.0, 2048: 0.9}  # ours / torch fp16
GROUP = 128
CALLS, REPLAYS = 20, 30
WARM_S = 0.05  # seconds of untimed replays before the timed ones
ROTATE_BYTES = 200 * 2**20


# Where the library runs its wgmma kernel (w4a16_wgmma_form: by default the strip form from 17 to 128 rows on
# an sm_90a build and Hopper GPU; VLM_W4A16_WGMMA=0 off, 1 or 2 that form at every M), the engine takes it; elsewhere
# from w4a16_dequant_gemm_min_rows() rows it dequantizes for cuBLAS (CudaRunner::linear in native/cuda/cuda_runner.cpp).
WGMMA_FORM = os.environ.get("VLM_W4A16_WGMMA", "") or "default"
WGMMA_FORM_NAMES = {1: "w4a16 wgmma kernel, block form", 2: "w4a16 wgmma kernel, strip form"}
# Rows our dense decode kernel takes (dense_decode.h); the engine runs it at one row.
DENSE_DECODE_MAX_ROWS = 4
# Rows the column-tile w4a16 kernel takes (w4a16_gemv.h), timed beside the engine's path.
GEMV_MAX_ROWS = 4
# Rows from which the CUTLASS mixed-input GEMM (w4a16_cutlass.cu, on builds that have it) is timed too.
CUTLASS_MIN_ROWS = 17


def dequant_chunk_columns(n: int, k: int) -> int:
    """Output columns the engine dequantizes at a time for a prefill-sized GEMM (CudaRunner::dequant_chunk_columns:
    all unless VLM_DEQUANT_CHUNK_COLUMNS or VLM_DEQUANT_CHUNK_MB)."""
    columns = int(os.environ.get("VLM_DEQUANT_CHUNK_COLUMNS", "0") or 0) // 64 * 64
    if columns > 0:
        return min(n, columns)
    mb = max(0, int(os.environ.get("VLM_DEQUANT_CHUNK_MB", "0") or 0))
    if mb == 0:
        return n
    return min(n, max(64, (mb << 20) // (k * 2) // 64 * 64))


def hbm_bandwidth() -> float:
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n / statistics.median(times)


def time_graph(fn_for_call) -> float:
    """Median seconds per call over REPLAYS replays of a graph of CALLS calls."""
    for i in range(3):  # warm-up outside the graph (module load, attribute setup)
        fn_for_call(i)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(CALLS):
            fn_for_call(i)
    # Replays for at least WARM_S before the timed ones: 30 replays of a ~20 us call last ~12 ms, too short to wash
    # out the clocks and caches left by whatever ran before (another kernel's timing, the weights' copies).
    start = time.perf_counter()
    while True:
        g.replay()
        torch.cuda.synchronize()
        if time.perf_counter() - start >= WARM_S:
            break
    times = []
    for _ in range(REPLAYS):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / CALLS)
    return statistics.median(times)


def random_packed_layer(n: int, k: int, rng) -> tuple:
    """(packed codes, packed scales/zeros) of an N x K layer for timing only: timing does not depend on the values,
    so random codes and zeros and one small scale (no quantization of real weights)."""
    qweight = rng.integers(0, 2**31, size=(k, n // 8), dtype=np.int64).astype(np.int32)
    qzeros = rng.integers(0, 2**31, size=(k // GROUP, n // 8), dtype=np.int64).astype(np.int32)
    scales = np.full((k // GROUP, n), 0.01, dtype=np.float16)
    return pack_w4a16(qweight, qzeros, scales, GROUP)


def copies_for(bytes_each: int) -> int:
    return max(2, math.ceil(ROTATE_BYTES / bytes_each) + 1)


def tinygemm_copies(qweight, scales, n: int, k: int, dev):
    """The layer in torch's int4 (tinygemm) layout, rotated copies and its (scale, zero-offset) array, or None where
    this torch lacks the kernel (said on stderr)."""
    try:  # uint8 [N, K/2] codes, bf16 [K/g, N, 2] (scale, zero-offset)
        codes = torch.from_numpy((qweight.view(np.uint32)[:, :, None] >> np.arange(0, 32, 4, dtype=np.uint32)) & 15)
        order = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])  # AutoAWQ nibble of column j is at position order[j]
        q = codes[:, :, order].reshape(k, n).T.contiguous().to(torch.int32)  # [N, K]
        q_u8 = ((q[:, 1::2] << 4) | q[:, ::2]).to(torch.uint8).to(dev)
        tiny = torch.ops.aten._convert_weight_to_int4pack(q_u8, 8)
        sz_t = torch.stack([torch.from_numpy(scales.astype(np.float32)),
                            torch.zeros(k // GROUP, n)], dim=-1).to(dev, torch.bfloat16)
        return [tiny.clone() for _ in range(copies_for(tiny.numel() * tiny.element_size()))], sz_t
    except Exception as e:  # reported, not hidden
        print(f"torch int4 kernel unavailable for {n}x{k}: {e}", file=sys.stderr)
        return None


def bench_layer(n: int, k: int, ms, rng, read_floor: bool = False, parts: str = "all") -> list[dict]:
    """Rows of timings for one layer at each M. parts: "all" (the library's paths and the peers, torch fp16 and int4,
    in this process), "ours" (the library's alone) or "peers" (torch's alone); the fields of what is not timed are
    NaN."""
    ours_too, peers_too = parts in ("all", "ours"), parts in ("all", "peers")
    w = (rng.standard_normal((n, k), dtype=np.float32) * 0.02)
    qweight, qzeros, scales = quantize_rtn(w, GROUP)
    dev = torch.device("cuda")
    ours_w = ours_sz = None
    if ours_too or read_floor:  # the peers' process (parts "peers") times none of the library's kernels
        packed, sz = pack_w4a16(qweight, qzeros, scales, GROUP)
        ours_w = [torch.from_numpy(packed).to(dev) for _ in range(copies_for(packed.nbytes))]
        ours_sz = torch.from_numpy(sz.view(np.int16)).to(dev)
    w16 = torch.from_numpy(w).to(dev, torch.float16)
    fp16_w = [w16.clone() for _ in range(copies_for(w16.numel() * 2))]
    int4 = tinygemm_copies(qweight, scales, n, k, dev) if peers_too else None
    t_read4 = t_read16 = float("nan")
    if read_floor:  # the layer's bytes read by a kernel that does nothing else, same rotation and timing
        sink = stream_read_sink(dev)
        t_read4 = time_graph(lambda i: stream_read(ours_w[i % len(ours_w)], sink))
        t_read16 = time_graph(lambda i: stream_read(fp16_w[i % len(fp16_w)], sink))
    cutlass_w = None  # the CUTLASS kernel's copies of the layer, made at the first M that times it
    gemv_w = None  # the column-tile kernel's copies, made at the first M it runs
    rows = []
    for m in ms:
        x16 = torch.randn(m, k, device=dev, dtype=torch.float16)
        out = torch.empty(m, n, device=dev, dtype=torch.float16)
        t_kernel = t_cutlass = t_ours = t_fp16 = t_int4 = t_dense = t_gemv = float("nan")
        gemv_parts = 0
        path = "not timed here (--peers apart: the library in another process)"
        if ours_too:
            ws = torch.zeros(max(1, w4a16_workspace_bytes(m, n, k, GROUP)), dtype=torch.uint8, device=dev)
            t_kernel = time_graph(lambda i: w4a16_gemm(x16, ours_w[i % len(ours_w)], ours_sz, n, GROUP, out=out,
                                                       workspace=ws))
            cutlass_is_ours = w4a16_cutlass_engine_takes(m, n, k, GROUP)
            if (m >= CUTLASS_MIN_ROWS or cutlass_is_ours) and w4a16_cutlass_built():
                if cutlass_w is None:
                    cutlass_w = [w4a16_cutlass_prepare(p, ours_sz, n, k, GROUP) for p in ours_w]
                cws = torch.empty(max(1, w4a16_cutlass_workspace_bytes(m, n, k, GROUP)), dtype=torch.uint8, device=dev)
                t_cutlass = time_graph(lambda i: w4a16_cutlass_gemm(x16, cutlass_w[i % len(cutlass_w)], n, GROUP,
                                                                    out=out, workspace=cws))
            form = w4a16_wgmma_form(m, n, k, GROUP)
            t_ours, path = t_kernel, WGMMA_FORM_NAMES.get(form, "w4a16 kernel")
            if form:  # how its K slices are summed (w4a16_wgmma_plan; VLM_W4A16_WGMMA_CLUSTER forces one way)
                splits, cluster = w4a16_wgmma_plan(m, n, k, GROUP)
                if splits > 1:
                    path += f", {splits} K slices summed {'in clusters' if cluster else 'from partials'}"
            if cutlass_is_ours:  # the engine's path at this size (w4a16_cutlass_rows.h)
                tiles = w4a16_cutlass_tiles(m, n, k, GROUP)  # weight rows x tokens x K a tile, and the scheduler
                scheduler = "stream-K" if tiles and tiles.stream_k else "data-parallel"
                path = "CUTLASS mixed-input GEMM" + (
                    f", tiles {tiles.tile_m}x{tiles.tile_n}x{tiles.tile_k} {scheduler}" if tiles else "")
                t_ours = t_cutlass
            elif m >= w4a16_dequant_gemm_min_rows() and not form:  # the engine's path here: dequantize, then cuBLAS
                chunk = dequant_chunk_columns(n, k)
                if chunk >= n:
                    scratch = torch.empty(n, k, device=dev, dtype=torch.float16)
                    t_ours = time_graph(lambda i: torch.nn.functional.linear(
                        x16, w4a16_dequantize(ours_w[i % len(ours_w)], ours_sz, n, k, GROUP, out=scratch)))
                    path = "dequantize + cuBLAS"
                else:  # as the engine with VLM_DEQUANT_CHUNK_MB: a stretch of whole strips at a time
                    scratch = torch.empty(chunk, k, device=dev, dtype=torch.float16)
                    outs = [torch.empty(m, min(chunk, n - n0), device=dev, dtype=torch.float16)
                            for n0 in range(0, n, chunk)]
                    w_bytes, sz_bytes = k * 32, (k // GROUP) * 256  # per 64-column strip (cpu/w4a16_pack.h)

                    def chunked(i):
                        w8 = ours_w[i % len(ours_w)].view(torch.uint8).reshape(-1)
                        sz8 = ours_sz.view(torch.uint8).reshape(-1)
                        for j, n0 in enumerate(range(0, n, chunk)):
                            c, s0 = min(chunk, n - n0), n0 // 64
                            w_c = w4a16_dequantize(w8[s0 * w_bytes:], sz8[s0 * sz_bytes:], c, k, GROUP, out=scratch[:c])
                            torch.mm(x16, w_c.t(), out=outs[j])

                    t_ours = time_graph(chunked)
                    path = f"dequantize + cuBLAS, {chunk} columns at a time"
        if ours_too and m <= GEMV_MAX_ROWS and (gemv_parts := w4a16_gemv_k_parts(m, n, k, GROUP)):
            if gemv_w is None:
                gemv_w = [w4a16_gemv_repack(p, n, k) for p in ours_w]
            t_gemv = time_graph(lambda i: w4a16_gemv(x16, gemv_w[i % len(gemv_w)], ours_sz, n, GROUP, out=out))
        if peers_too:
            t_fp16 = time_graph(lambda i: torch.nn.functional.linear(x16, fp16_w[i % len(fp16_w)]))
        if ours_too and m <= DENSE_DECODE_MAX_ROWS:
            t_dense = time_graph(lambda i: dense_decode_gemm(x16, fp16_w[i % len(fp16_w)], out=out))
        if int4 is not None:
            xb = x16.to(torch.bfloat16)
            try:
                t_int4 = time_graph(lambda i: torch.ops.aten._weight_int4pack_mm(xb, int4[0][i % len(int4[0])],
                                                                                GROUP, int4[1]))
            except Exception as e:
                print(f"torch int4 failed at M={m} {n}x{k}: {e}", file=sys.stderr)
        rows.append({"n": n, "k": k, "m": m, "ours_s": t_ours, "ours_path": path, "w4a16_kernel_s": t_kernel,
                     "torch_fp16_s": t_fp16, "torch_int4_s": t_int4, "dense_decode_s": t_dense, "cutlass_s": t_cutlass,
                     "read_4bit_s": t_read4, "read_fp16_s": t_read16, "gemv_s": t_gemv, "gemv_k_parts": gemv_parts})
        print(f"  {n}x{k} M={m}: ours {t_ours * 1e6:.1f} us, fp16 {t_fp16 * 1e6:.1f} us, "
              f"int4 {t_int4 * 1e6:.1f} us, cutlass {t_cutlass * 1e6:.1f} us", file=sys.stderr)
    del ours_w, fp16_w, int4, cutlass_w, gemv_w
    torch.cuda.empty_cache()
    return rows


def peer_rows_apart(names: list[str], ms) -> dict:
    """torch fp16 and int4 on the same layers and M, timed in a process of their own (this script with --part
    peers): in one process with the library's calls each kernel's timing follows the other's, which the schedule
    benchmark (bench/cutlass_schedules.py) found to bias a comparison by up to 17 %."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows_out = Path(tmp) / "peers.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--part", "peers", "--layers", ",".join(names),
                        "--ms", ",".join(str(m) for m in ms), "--out-dir", tmp, "--rows-out", str(rows_out)],
                       check=True)
        return {(r["layer"], r["m"]): r for r in json.loads(rows_out.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="two layers, M = 1 and 64")
    ap.add_argument("--out-dir", default="bench/results")
    ap.add_argument("--ms", default=None, help="comma-separated M values (default: 1,16,64,256,2048)")
    ap.add_argument("--layers", default=None, help="comma-separated layer names (default: all, e.g. 2B.o,7B.qkv)")
    ap.add_argument("--read-floor", action="store_true",
                    help="also time a read-only kernel over each layer's packed 4-bit and fp16 weights")
    ap.add_argument("--peers", choices=("inline", "apart"), default="inline",
                    help="inline: torch fp16 and int4 timed in this process, each M right after the library's calls; "
                         "apart: in a process of their own first, the library's here after them")
    ap.add_argument("--part", choices=("all", "ours", "peers"), default="all", help=argparse.SUPPRESS)
    ap.add_argument("--rows-out", default=None, help=argparse.SUPPRESS)  # --peers apart's child: its rows, as JSON
    a = ap.parse_args()
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bw = hbm_bandwidth()
    rng = np.random.default_rng(0)
    names = a.layers.split(",") if a.layers else (["2B.o", "7B.qkv"] if a.quick else list(LAYERS))
    unknown = [k for k in names if k not in LAYERS]
    if unknown:
        ap.error(f"unknown layers {unknown}; known: {', '.join(LAYERS)}")
    layers = {k: LAYERS[k] for k in names}
    ms = (1, 64) if a.quick else MS
    if a.ms:
        ms = tuple(int(x) for x in a.ms.split(","))
    peers = {}  # (layer, M): the child's row, where the peers are timed apart
    if a.peers == "apart" and a.part == "all":
        peers = peer_rows_apart(names, ms)
    results = []
    for name, (n, k) in layers.items():
        print(f"{name} ({n}x{k})", file=sys.stderr)
        part = "ours" if peers else a.part
        for r in bench_layer(n, k, ms, rng, read_floor=a.read_floor, parts=part):
            r["layer"] = name
            r["fp16_floor_s"] = n * k * 2 / bw
            r["int4_floor_s"] = n * k * 0.53125 / bw
            if peers:
                r["torch_fp16_s"] = peers[(name, r["m"])]["torch_fp16_s"]
                r["torch_int4_s"] = peers[(name, r["m"])]["torch_int4_s"]
            results.append(r)
    if a.rows_out:
        Path(a.rows_out).write_text(json.dumps(results))
        return
    device = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# w4a16 GEMM: vlmserve vs torch fp16 (cuBLAS) and torch int4 (tinygemm)", "",
             f"- Device: {device}; measured HBM bandwidth {bw / 1e12:.2f} TB/s (copy, read + write)",
             f"- Date: {date}; torch {torch.__version__}",
             *settings_line(library_settings()),
             f"- Command: `{' '.join(['python bench/gemm.py'] + sys.argv[1:])}`",
             f"- Method: weights rotated over > 200 MB, {CALLS} calls per CUDA graph, median of {REPLAYS} replays; "
             f"group size {GROUP}; fp16 activations (torch int4 takes bf16); "
             + ("torch fp16 and int4 timed in a process of their own, before the library's (--peers apart)"
                if peers else "torch fp16 and int4 timed in this process, each M right after the library's calls"),
             f"- Ours is the engine's path (VLM_W4A16_WGMMA={WGMMA_FORM}), named in the table: the w4a16 kernel "
             f"(decode-size up to 16 rows, else the general one) or the wgmma kernel; from "
             f"{w4a16_dequant_gemm_min_rows()} rows, where the wgmma kernel does not run, the layer is dequantized "
             f"(vlm_w4a16_dequantize) into a "
             f"scratch matrix and multiplied by cuBLAS (here through torch), both inside the timed graph; where the "
             f"engine gives the shape to the CUTLASS GEMM (vlm_w4a16_cutlass_engine_takes; VLM_W4A16_CUTLASS, on by "
             f"default) it is that kernel's time",
             f"- Our fp16: the dense decode kernel (vlm_dense_decode_gemm) on the same fp16 weights, up to "
             f"{DENSE_DECODE_MAX_ROWS} rows (the engine runs it for unquantized models' one-row steps)",
             "- Read floor (with --read-floor): one kernel that only reads the layer's packed 4-bit weights, and its "
             "fp16 weights, with the same rotation and timing (vlm_stream_read): a call of those bytes cannot be "
             "faster",
             f"- CUTLASS (from {CUTLASS_MIN_ROWS} rows, builds that have it): the mixed-input GEMM of "
             "w4a16_cutlass.cu on its own copy of the layer (vlm_w4a16_cutlass_gemm), same rotation and timing",
             f"- Column tiles (up to {GEMV_MAX_ROWS} rows): the column-tile w4a16 kernel (vlm_w4a16_gemv, whole output "
             "columns a block, P warps a 16-column tile) on its own copy of the layer, same rotation and timing", "",
             "| layer | M | torch fp16 µs | torch int4 µs | ours µs | our path | w4a16 kernel µs | × fp16 | × int4 "
             "| ours % of int4 floor | fp16 % of fp16 floor | our fp16 µs | our fp16 % of fp16 floor "
             "| read floor 4-bit / fp16 µs | CUTLASS µs | CUTLASS × fp16 | CUTLASS × int4 "
             "| column tiles µs (P) | column tiles × fp16 | column tiles × int4 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['layer']} | {r['m']} | {r['torch_fp16_s'] * 1e6:.1f} | {r['torch_int4_s'] * 1e6:.1f} | "
                     f"{r['ours_s'] * 1e6:.1f} | {r['ours_path']} | {r['w4a16_kernel_s'] * 1e6:.1f} | "
                     f"{r['torch_fp16_s'] / r['ours_s']:.2f} | "
                     f"{r['torch_int4_s'] / r['ours_s']:.2f} | {100 * r['int4_floor_s'] / r['ours_s']:.0f}% | "
                     f"{100 * r['fp16_floor_s'] / r['torch_fp16_s']:.0f}% | "
                     + (f"{r['dense_decode_s'] * 1e6:.1f} | {100 * r['fp16_floor_s'] / r['dense_decode_s']:.0f}% |"
                        if not math.isnan(r['dense_decode_s']) else "— | — |")
                     + (f" {r['read_4bit_s'] * 1e6:.1f} / {r['read_fp16_s'] * 1e6:.1f} |"
                        if not math.isnan(r.get("read_4bit_s", math.nan)) else " — |")
                     + (f" {r['cutlass_s'] * 1e6:.1f} | {r['torch_fp16_s'] / r['cutlass_s']:.2f} | "
                        f"{r['torch_int4_s'] / r['cutlass_s']:.2f} |"
                        if not math.isnan(r.get("cutlass_s", math.nan)) else " — | — | — |")
                     + (f" {r['gemv_s'] * 1e6:.1f} ({r['gemv_k_parts']}) | {r['torch_fp16_s'] / r['gemv_s']:.2f} | "
                        f"{r['torch_int4_s'] / r['gemv_s']:.2f} |"
                        if not math.isnan(r.get("gemv_s", math.nan)) else " — | — | — |"))
    lines += ["", "## Targets (7B shapes: ours / torch fp16; and faster than torch int4 at every M)", ""]
    for m, target in TARGETS_7B.items():
        rs = [r for r in results if r["m"] == m and r["layer"].startswith("7B")]
        if not rs:
            continue
        ratios = [r["torch_fp16_s"] / r["ours_s"] for r in rs]
        beats_int4 = all(r["ours_s"] < r["torch_int4_s"] for r in rs if not math.isnan(r["torch_int4_s"]))
        lines.append(f"- M={m}: ≥ {target}× fp16 — measured {', '.join(f'{x:.2f}' for x in ratios)} "
                     f"(min {min(ratios):.2f}): {'met' if min(ratios) >= target else 'NOT met'}; "
                     f"faster than torch int4: {'yes' if beats_int4 else 'NO'}")
        cut = [r for r in rs if not math.isnan(r.get("cutlass_s", math.nan))]
        if cut:  # the CUTLASS kernel's figures against the same target
            cr = [r["torch_fp16_s"] / r["cutlass_s"] for r in cut]
            lines.append(f"  - CUTLASS: {', '.join(f'{x:.2f}' for x in cr)} (min {min(cr):.2f}): "
                         f"{'met' if min(cr) >= target and len(cut) == len(rs) else 'NOT met'}; faster than torch "
                         f"int4: {'yes' if all(r['cutlass_s'] < r['torch_int4_s'] for r in cut) else 'NO'}")
        tiles = [r for r in rs if not math.isnan(r.get("gemv_s", math.nan))]
        if tiles:  # the column-tile kernel's figures against the same target
            gr = [r["torch_fp16_s"] / r["gemv_s"] for r in tiles]
            lines.append(f"  - column tiles: {', '.join(f'{x:.2f}' for x in gr)} (min {min(gr):.2f}): "
                         f"{'met' if min(gr) >= target and len(tiles) == len(rs) else 'NOT met'}; faster than torch "
                         f"int4: {'yes' if all(r['gemv_s'] < r['torch_int4_s'] for r in tiles) else 'NO'}")
        floors = [r for r in rs if not math.isnan(r["read_4bit_s"])]
        if floors:  # the time the target asks for against what reading the 4-bit weights alone takes
            lines.append("  - target time (torch fp16 / target) against the 4-bit read floor, µs: " + ", ".join(
                f"{r['layer']} {r['torch_fp16_s'] / target * 1e6:.1f} vs {r['read_4bit_s'] * 1e6:.1f}"
                for r in floors))
    text = "\n".join(lines) + "\n"
    (out_dir / "gemm.md").write_text(text)
    (out_dir / "gemm.json").write_text(json.dumps({"device": device, "date": date, "hbm_bytes_per_s": bw,
                                                   "peers": "apart" if peers else "inline",
                                                   "library_settings": library_settings(), "results": results},
                                                  indent=1))
    print(text)


if __name__ == "__main__":
    main()

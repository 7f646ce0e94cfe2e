#!/usr/bin/env python3
"""Vision encoder benchmark: the service's forward (tiles in CPU memory -> embeddings in CPU memory) per batch
size, eager, replayed from CUDA graphs and compiled (torch.compile, then graphs), alone and with Python threads
holding the GIL beside it.

The busy threads stand in for what shares the stack process with the encoder (gRPC threads, token streams,
the engine's poller): each runs pure-Python work in a loop, so an eager forward, which launches every kernel
from Python, competes with them for the GIL; a replayed one launches once. Also measured: the image
processor's throughput with 1..8 threads (the CPU part of an Encode call). FLOPs come from torch's FlopCounterMode on one
eager forward; the fraction is against the dense bf16 matrix peak measured on the H100 (798 TFLOP/s,
ANCHORS.md). Each figure is the median of --reps timed calls after warm-up.

    python3 bench/vision.py --model-name internvl-2b --out-dir bench/results     # a GPU machine
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run_info import git_revision, ints, write_atomic  # noqa: E402
from serving.models import add_model_args, describe, write_model  # noqa: E402

PEAK_TFLOPS = 798.0  # dense bf16 matrix product on the lent H100 (ANCHORS.md)


def log(msg: str) -> None:
    print(f"[vision] {msg}", file=sys.stderr, flush=True)


class BusyThreads:
    """n threads doing pure-Python work (they hold the GIL whenever they run) until stopped."""

    def __init__(self, n: int):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._spin, daemon=True) for _ in range(n)]

    def _spin(self) -> None:
        x = 0
        while not self._stop.is_set():
            for i in range(1000):
                x = (x * 31 + i) % 1000003

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join()


def add_image_args(ap: argparse.ArgumentParser) -> None:
    """The request image: a real photo, resized to the benchmark's size (also bench/preprocess.py's)."""
    ap.add_argument("--image", type=Path, default=ROOT / "python/vlmserve/data/images/chelsea.png")
    ap.add_argument("--image-size", type=int, default=512)


def request_image(a: argparse.Namespace):
    from PIL import Image

    return Image.open(a.image).convert("RGB").resize((a.image_size, a.image_size), Image.BICUBIC)


def model_on_gpu(a: argparse.Namespace, why: str, say=None) -> Path | None:
    """The benchmark model's checkpoint (written once under --work), or None, said through `say`, where torch sees
    no CUDA GPU (`why` the benchmark needs one)."""
    import torch

    if not torch.cuda.is_available():
        (say or log)(f"needs a CUDA GPU ({why}); torch sees none")
        return None
    return write_model(a.work / a.model_name, a.model_name)


def median_ms(fn, reps: int, budget_s: float = 10.0) -> tuple[float, int]:
    """(median ms, calls timed): reps calls after a warm-up, fewer (at least 3) once budget_s has passed."""
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, len(times)


def prepare_rate(encoder, png: bytes, threads: int, per_thread: int) -> float:
    """Images per second through decode + the model's image processor with `threads` threads at once (the
    vision service's --preprocess-threads)."""
    from concurrent.futures import ThreadPoolExecutor

    from vlmserve.vision.image_source import ImageSource

    def work(_):
        for _ in range(per_thread):
            encoder.prepare(encoder.load_image(ImageSource(data=png, mime_type="image/png")))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))  # warm-up
        t = time.perf_counter()
        list(pool.map(work, range(threads)))
    return threads * per_thread / (time.perf_counter() - t)


def forward_flops(encoder, tiles) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    inputs = {k: v.to(encoder.device, encoder.dtype) if v.is_floating_point() else v.to(encoder.device)
              for k, v in tiles.tensors.items()}
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder.family.features(encoder.model, inputs)
    return float(counter.get_total_flops())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--batches", type=ints, default=[1, 2, 4, 8, 16])
    ap.add_argument("--busy-threads", type=ints, default=[0, 4],
                    help="GIL-holding threads beside the forward (at the smallest batch)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--prepare-threads", type=ints, default=[1, 2, 4, 8])
    add_image_args(ap)
    ap.add_argument("--modes", default="eager,graphs,compiled",
                    help="eager; graphs (CUDA graphs); compiled (torch.compile, then CUDA graphs)")
    ap.add_argument("--out-dir", type=Path, required=True)
    a = ap.parse_args()

    import torch

    from vlmserve.vision import VisionConfig, VisionEncoder
    from vlmserve.vision.tiles import Tiles

    model = model_on_gpu(a, "it measures CUDA graphs against eager forwards")
    if model is None:
        return 2
    image = request_image(a)
    largest = max(a.batches)
    encoders = {}
    settings = {"eager": {"cuda_graphs": False}, "graphs": {}, "compiled": {"compile": True}}
    modes = [m for m in a.modes.split(",") if m]
    unknown = [m for m in modes if m not in settings]
    if unknown or not modes:
        log(f"unknown modes {unknown}; choose from {list(settings)}")
        return 2
    for mode in modes:
        t = time.perf_counter()
        enc = VisionEncoder(model, VisionConfig(max_batch_size=largest, **settings[mode]))
        enc.warmup()
        encoders[mode] = enc
        log(f"{mode}: loaded and warmed up in {time.perf_counter() - t:.1f} s")
    enc = next(iter(encoders.values()))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    png = buf.getvalue()
    prepare = []
    for threads in a.prepare_threads:
        rate = prepare_rate(enc, png, threads, 16)
        prepare.append({"threads": threads, "images_per_s": rate})
        log(f"decode + image processor, {threads} thread(s): {rate:.1f} images/s")
    one = enc.prepare(image).tiles
    rows = []
    for batch in a.batches:
        tiles = Tiles({k: v.repeat(batch, *([1] * (v.dim() - 1))) for k, v in one.tensors.items()})
        flops = forward_flops(enc, tiles)
        # Every mode's output against the first mode's (torch.compile reorders floating-point sums).
        ref = enc.forward(tiles).float()
        diffs = {m: float((e.forward(tiles).float() - ref).abs().max()) for m, e in encoders.items()}
        log(f"batch {batch:2d} max |difference| from {next(iter(encoders))}: {diffs} (outputs' max |x| "
            f"{float(ref.abs().max()):.3g})")
        # GIL contention is shown at the smallest batch: an eager forward under it takes seconds.
        for busy in a.busy_threads if batch == min(a.batches) else [0]:
            for mode, e in encoders.items():
                with BusyThreads(busy):
                    ms, timed = median_ms(lambda: e.forward(tiles), a.reps)
                rows.append({"batch": batch, "busy_threads": busy, "mode": mode, "ms": ms, "calls": timed,
                             "max_abs_diff": diffs[mode],
                             "tiles_per_s": batch / ms * 1e3, "tflops": flops / ms / 1e9,
                             "peak_fraction": flops / ms / 1e9 / PEAK_TFLOPS})
                log(f"batch {batch:2d} busy {busy} {mode:6s}: {ms:7.2f} ms, {batch / ms * 1e3:6.1f} tiles/s, "
                    f"{flops / ms / 1e9:5.1f} TFLOP/s")
    result = {"meta": {"command": "python3 bench/vision.py " + " ".join(sys.argv[1:]),
                       "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                       "device": torch.cuda.get_device_name(0), "git": git_revision(),
                       "model": describe(a.model_name), "dtype": str(enc.dtype).replace("torch.", ""),
                       "tokens_per_tile": enc.tokens_per_tile, "prepare": prepare,
                       "image": f"{a.image.name} resized to {a.image_size}x{a.image_size}",
                       "graph_sizes": {m: e.graph_sizes for m, e in encoders.items()}, "peak_tflops": PEAK_TFLOPS},
              "rows": rows}
    a.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(a.out_dir / f"vision_{a.model_name}.json", json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

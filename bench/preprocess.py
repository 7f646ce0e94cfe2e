#!/usr/bin/env python3
"""Image preparation benchmark: a JPEG request's image through decoding and the model's image processor, with
the processor's arithmetic on the host (`--preprocess-device cpu`) and on the GPU (`cuda`), as the vision
service prepares it.

For each place: the latency of one image alone (median), the host CPU one image costs the preparing thread
(thread CPU time; on the GPU that is decoding plus the processor's Python), and images per second with 1..8
threads at once, alone and with Python threads holding the GIL beside them (what the service's event loop and
forward thread do under load). The tiles prepared on the GPU are checked against the host's (largest
difference in the normalized pixel values) and so are the encoder's embeddings of them.

    python3 bench/preprocess.py --model-name internvl-2b --out-dir bench/results     # a GPU machine
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run_info import git_revision, ints, write_atomic  # noqa: E402
from serving.models import add_model_args, describe  # noqa: E402
from vision import BusyThreads, add_image_args, model_on_gpu, request_image  # noqa: E402


def log(msg: str) -> None:
    print(f"[preprocess] {msg}", file=sys.stderr, flush=True)


def one_image(preparer, source, reps: int) -> tuple[float, float]:
    """(median ms, median thread CPU ms) of preparing one image, alone."""
    wall, cpu = [], []
    preparer.prepare_source(source)  # warm-up
    for _ in range(reps):
        w, c = time.perf_counter(), time.thread_time()
        preparer.prepare_source(source)
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def rate(preparer, source, threads: int, per_thread: int) -> float:
    """Images per second with `threads` threads preparing at once."""
    def work(_):
        for _ in range(per_thread):
            preparer.prepare_source(source)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))  # warm-up (and each thread's stream)
        t = time.perf_counter()
        list(pool.map(work, range(threads)))
    return threads * per_thread / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--threads", type=ints, default=[1, 4, 8])
    ap.add_argument("--busy-threads", type=ints, default=[0, 2])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--per-thread", type=int, default=32)
    add_image_args(ap)
    ap.add_argument("--out-dir", type=Path, required=True)
    a = ap.parse_args()

    import torch

    from vlmserve.vision import VisionConfig, VisionEncoder
    from vlmserve.vision.image_source import ImageSource

    model = model_on_gpu(a, "it compares the image processor on the GPU with the host", log)
    if model is None:
        return 2
    image = request_image(a)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    source = ImageSource(data=buf.getvalue(), mime_type="image/jpeg")

    encoder = VisionEncoder(model, VisionConfig(preprocess_device="cuda"))
    encoder.warmup()
    preparer = encoder.preparer
    gpu = preparer.device
    rows = []
    prepared = {}
    for place in ("cpu", "cuda"):
        preparer.device = None if place == "cpu" else gpu
        prepared[place] = preparer.prepare_source(source)
        ms, cpu_ms = one_image(preparer, source, a.reps)
        log(f"{place}: one image {ms:.2f} ms, {cpu_ms:.2f} ms of the thread's CPU "
            f"({type(preparer.image_processor).__name__})")
        for busy in a.busy_threads:
            with BusyThreads(busy):
                for threads in a.threads:
                    r = rate(preparer, source, threads, a.per_thread)
                    rows.append({"place": place, "busy_threads": busy, "threads": threads, "images_per_s": r,
                                 "one_image_ms": ms, "one_image_thread_cpu_ms": cpu_ms})
                    log(f"{place}: {threads} thread(s), {busy} busy: {r:.1f} images/s")
    preparer.device = gpu
    host, dev = prepared["cpu"].tiles.tensors, prepared["cuda"].tiles.tensors
    pixel_diff = max(float((dev[k].cpu().double() - host[k].double()).abs().max()) for k in host
                     if host[k].is_floating_point())
    emb_host = encoder.forward(prepared["cpu"].tiles).float()
    emb_dev = encoder.forward(prepared["cuda"].tiles).float()
    emb_diff = float((emb_dev - emb_host).abs().max())
    log(f"GPU against host: pixel values differ by at most {pixel_diff:.3g}; embeddings by at most {emb_diff:.3g} "
        f"(their max |x| {float(emb_host.abs().max()):.3g})")
    result = {"meta": {"command": "python3 bench/preprocess.py " + " ".join(sys.argv[1:]),
                       "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                       "device": torch.cuda.get_device_name(0), "git": git_revision(),
                       "model": describe(a.model_name), "processor": type(preparer.image_processor).__name__,
                       "image": f"{a.image.name} resized to {a.image_size}x{a.image_size}, JPEG",
                       "pixel_max_abs_diff": pixel_diff, "embedding_max_abs_diff": emb_diff},
              "rows": rows}
    write_atomic(a.out_dir / f"preprocess_{a.model_name}.json", json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The vision service's image preparation in worker processes (PreprocessPool) while Python threads of the service
process hold the GIL (what its event loop and forward thread do under load): how long an image takes from
submission to tiles in hand, with the tiles coming back through the result pipe or through shared memory, and with
the interpreter's GIL switch interval at each value given.

Each run keeps `--in-flight` images submitted at once from an asyncio loop in the main thread, as the service's
Encode calls do, with `--busy` threads spinning beside it. The images are a JPEG of the request photo, prepared by
the InternVL processor at `--tile` pixels (one tile: 448 is the 2B's 2.4 MB fp32 tile); the checkpoint is the
toy InternVL with its processor set to that size (preparation needs the processor and config, no weights).

    python3 bench/preprocess_pool.py --out-dir bench/results/preprocess_pool
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run_info import floats, git_revision, ints, write_atomic  # noqa: E402
from serving.models import write_model  # noqa: E402
from vision import BusyThreads, add_image_args, request_image  # noqa: E402


def log(msg: str) -> None:
    print(f"[preprocess_pool] {msg}", file=sys.stderr, flush=True)


def processor_checkpoint(work: Path, tile: int) -> Path:
    """The toy InternVL checkpoint with its image processor preparing `tile`-pixel tiles."""
    directory = write_model(work / "internvl-tiny", "internvl-tiny")
    out = work / f"internvl-tiny-processor-{tile}"
    out.mkdir(parents=True, exist_ok=True)
    for f in directory.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model", ".jinja") and f.name != "preprocessor_config.json":
            (out / f.name).write_bytes(f.read_bytes())
    pre = json.loads((directory / "preprocessor_config.json").read_text())
    pre["size"] = {"height": tile, "width": tile}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    return out


async def run_level(pool, source, in_flight: int, images: int) -> list[float]:
    """Seconds each image took, `in_flight` of them always submitted, until `images` are done."""
    waits: list[float] = []
    remaining = images

    async def lane():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await pool.prepare(source)
            waits.append(time.perf_counter() - t)

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return waits


def measure(checkpoint: Path, jpeg: bytes, transfer: str, switch_ms: float, busy: int, in_flight: int, images: int,
            workers: int) -> dict:
    from vlmserve.vision import VisionConfig
    from vlmserve.vision.image_source import ImageSource
    from vlmserve.vision.preprocess_pool import PreprocessPool

    pool = PreprocessPool(checkpoint, VisionConfig(device="cpu", preprocess_threads=workers), tokens_per_tile=1,
                          processes=True, shared_tiles=transfer == "shared")
    if transfer == "shared" and pool.shared_from is None:
        pool.close()
        raise SystemExit("shared-memory transfer asked for, but this machine has no /dev/shm")
    source = ImageSource(data=jpeg, mime_type="image/jpeg")
    before = sys.getswitchinterval()
    try:
        pool.start()
        asyncio.run(run_level(pool, source, in_flight, 2 * workers))  # every worker's first image
        sys.setswitchinterval(switch_ms / 1e3)
        with BusyThreads(busy):
            start = time.perf_counter()
            waits = sorted(asyncio.run(run_level(pool, source, in_flight, images)))
            wall = time.perf_counter() - start
    finally:
        sys.setswitchinterval(before)
        pool.close()
    return {"transfer": transfer, "switch_interval_ms": switch_ms, "busy_threads": busy, "in_flight": in_flight,
            "images": len(waits), "images_per_s": len(waits) / wall, "ms_p50": 1e3 * waits[len(waits) // 2],
            "ms_p90": 1e3 * waits[int(len(waits) * 0.9)], "ms_mean": 1e3 * statistics.mean(waits)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_image_args(ap)
    ap.add_argument("--tile", type=int, default=448, help="the processor's tile size in pixels")
    ap.add_argument("--transfers", default="pipe,shared", help="how tiles come back: pipe, shared")
    ap.add_argument("--switch-ms", type=floats, default=[5.0, 1.0, 0.5], help="GIL switch intervals (Python's: 5)")
    ap.add_argument("--busy", type=ints, default=[0, 2], help="GIL-holding threads beside the loop")
    ap.add_argument("--in-flight", type=int, default=8, help="images submitted at once")
    ap.add_argument("--images", type=int, default=48, help="images timed a run")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/preprocess-pool-work"))
    ap.add_argument("--out-dir", type=Path, default=None)
    a = ap.parse_args()

    checkpoint = processor_checkpoint(a.work, a.tile)
    buf = io.BytesIO()
    request_image(a).save(buf, "JPEG", quality=90)
    rows = []
    for busy in a.busy:
        for switch_ms in a.switch_ms:
            for transfer in a.transfers.split(","):
                r = measure(checkpoint, buf.getvalue(), transfer, switch_ms, busy, a.in_flight, a.images, a.workers)
                rows.append(r)
                log(f"busy {busy}, switch {switch_ms:g} ms, {transfer:6s}: {r['images_per_s']:6.1f} images/s, "
                    f"p50 {r['ms_p50']:7.1f} ms, p90 {r['ms_p90']:7.1f} ms")
    if a.out_dir is not None:
        result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "revision": git_revision(), "command": " ".join(sys.argv), "tile": a.tile, "workers": a.workers,
                  "image_size": a.image_size, "rows": rows}
        write_atomic(a.out_dir / "preprocess_pool.json", json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

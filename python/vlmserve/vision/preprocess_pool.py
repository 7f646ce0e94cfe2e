"""Where the vision service decodes and preprocesses images: worker processes or threads.

Decoding and the image processor hold the GIL for part of their work. In the
vision service the GIL is also wanted by the event loop (every Encode call's
messages) and by the forward thread, so under load a preprocessing thread spends
most of its time waiting for it: on the H200, a 512×512 JPEG took 121 ms to
prepare at concurrency 64 against 6 ms alone, while the eight preprocessing
threads together used half a core. Worker processes have interpreters of their
own and spread over the machine's cores; they are the default when the encoder
runs on CUDA. On the CPU the encoder's forward already uses every core, and
threads (no start-up cost, no copies) are the default.

Where the image processor runs on the GPU (preparer.py, VisionConfig's
preprocess_device), threads prepare: what is left on the host is decoding
(Pillow lets go of the GIL while it decodes) and the processor's Python, and
a worker process would need a CUDA context of its own.

Handing an image to a worker process costs its transfer both ways (on the H200
7 ms a 512×512 image at concurrency 1: 12.6 against 5.4 ms), which only pays
when images queue. So in process mode one image at a time is prepared in a
thread of the service process, the lone image of a quiet server always; only
the images beside it go to the workers.

A prepared tile (a 448-pixel one is 2.4 MB of fp32) comes back through shared
memory, not the result pipe: the pipe delivers it in 64 KiB reads, and the
executor's thread that reads them needs the GIL for each, so with the service's
event loop and forward thread holding it (up to a 5 ms switch interval each
time) images arrived 17 times slower beside one GIL-holding thread, 2 cores,
8 in flight (bench/preprocess_pool.py: p50 1.28 s against 75 ms alone).
The worker writes each large array into a block of its own and sends its name;
the service process copies it out and unlinks the block as soon as the result
arrives, in the executor's thread, whether or not anyone still waits for it.
Blocks are named after the service process (vlm-tiles-<pid>-...), and a new
pool removes any left over for ten minutes (a service killed mid-image).

A worker process that dies (killed, out of memory, a crash inside a decoder)
breaks its pool: the pool is replaced, and each image that was in it is tried
once more on the new one, so one bad upload fails its own request, not everyone's.
The replacement starts its workers as images arrive (seconds for the first).

    pool = PreprocessPool.for_encoder(encoder)   # after encoder.warmup()
    prepared = await pool.prepare(source)        # PreparedImage, or the error the image deserves
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import multiprocessing
import os
import secrets
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlmserve.errors import InternalError, VlmError
from vlmserve.vision.config import VisionConfig
from vlmserve.vision.image_source import ImageSource
from vlmserve.vision.tiles import PreparedImage, Tiles

if TYPE_CHECKING:
    from vlmserve.vision.encoder import VisionEncoder

log = logging.getLogger(__name__)

SHARED_MIN_BYTES = 64 << 10  # arrays from this size on come back through shared memory, smaller ones pickled
SHM_PREFIX = "vlm-tiles-"
SHM_DIR = Path("/dev/shm")
SHM_HEADROOM = 16 << 20  # free space left in /dev/shm beside a new block (other workers write theirs meanwhile)
ORPHAN_AGE_S = 600  # a block lives milliseconds (from the worker's write to the service's copy); older is left over


def remove_orphan_blocks(directory: Path = SHM_DIR, older_than_s: float = ORPHAN_AGE_S) -> int:
    """Unlinks tile blocks older than older_than_s (a service process killed while images were in flight leaves
    its blocks behind); returns how many. By age, not by owner: a /dev/shm shared between containers holds blocks
    of services whose process ids mean nothing here, and no block in use is that old."""
    removed, now = 0, time.time()
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(SHM_PREFIX):
            continue
        try:
            if now - entry.stat().st_mtime > older_than_s:
                entry.unlink()
                removed += 1
        except OSError:
            pass  # gone meanwhile, or not ours to remove
    return removed


# -- in a worker process ------------------------------------------------------------------------------

_preparer = None  # this worker's ImagePreparer, built by _init_worker
_owner_pid = 0  # the service process whose pool this worker serves


def _shm_free_bytes() -> int:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _to_shared(array: np.ndarray, shared_from: int):
    """An array of shared_from bytes or more as (block name, shape, dtype) in a shared-memory block the service
    process unlinks; a smaller one, or one /dev/shm has no room for (a container's is 64 MiB unless sized), as
    itself (it goes through the pipe)."""
    if array.nbytes < shared_from or _shm_free_bytes() < array.nbytes + SHM_HEADROOM:
        return array
    name = f"{SHM_PREFIX}{_owner_pid}-{secrets.token_hex(8)}"
    try:
        block = shared_memory.SharedMemory(name=name, create=True, size=array.nbytes)
    except OSError:  # no room or no descriptors left: the pipe still works
        return array
    # The service process unlinks it: this worker's resource tracker must not (it would warn and unlink again).
    resource_tracker.unregister(block._name, "shared_memory")
    try:
        # Reserve the pages now: a full /dev/shm fails here (ENOSPC) rather than with SIGBUS in the copy.
        if getattr(block, "_fd", -1) >= 0:
            os.posix_fallocate(block._fd, 0, array.nbytes)
        np.ndarray(array.shape, array.dtype, buffer=block.buf)[...] = array
    except BaseException as e:
        block.close()
        block.unlink()
        if isinstance(e, OSError):  # no room after all: the pipe still works
            return array
        raise
    block.close()
    return (name, array.shape, array.dtype.str)


def _init_worker(directory: str, config: VisionConfig, tokens_per_tile: int, owner_pid: int = 0) -> None:
    global _preparer, _owner_pid
    _owner_pid = owner_pid or os.getppid()
    from vlmserve.vision.preparer import ImagePreparer

    # One image at a time per process: the pool, not torch's intra-op threads, spreads the work over the cores.
    torch.set_num_threads(1)
    _preparer = ImagePreparer(directory, config, tokens_per_tile)
    # One image through decoding and the processor now: a worker's first image paid their lazy set-up (up to
    # ~100 ms on the H200) inside a request.
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(buf, "JPEG")
    _preparer.prepare_source(ImageSource(data=buf.getvalue(), mime_type="image/jpeg"))


def _ready() -> int:
    return 0 if _preparer is None else _preparer.tokens_per_tile


def _prepare_in_worker(source: ImageSource, shared_from: int | None = SHARED_MIN_BYTES):
    """The prepared image as plain arrays (numpy, not torch tensors, whose pickling would go through torch's own
    shared-memory handles), those of shared_from bytes or more in shared-memory blocks (None: none)."""
    prepared = _preparer.prepare_source(source)
    arrays = {k: v.numpy() for k, v in prepared.tiles.tensors.items()}
    if shared_from is not None:
        made = []
        try:
            for k, v in arrays.items():
                arrays[k] = _to_shared(v, shared_from)
                if isinstance(arrays[k], tuple):
                    made.append(arrays[k][0])
        except BaseException:
            for name in made:
                _unlink_block(name)
            raise
    return arrays, prepared.layout


# -- in the service -------------------------------------------------------------------------------------

def _unlink_block(name: str) -> None:
    try:
        block = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    block.close()
    block.unlink()


def _from_shared(arrays: dict) -> dict[str, torch.Tensor]:
    """The worker's arrays as tensors of this process, every shared-memory block copied out and unlinked (all of
    them, even when one fails)."""
    out, error = {}, None
    for k, v in arrays.items():
        if not isinstance(v, tuple):
            out[k] = torch.from_numpy(v)
            continue
        name, shape, dtype = v
        try:
            block = shared_memory.SharedMemory(name=name)
        except FileNotFoundError as e:
            error = error or InternalError(f"a prepared image's {k} was lost before it arrived ({e})")
            continue
        try:
            out[k] = torch.from_numpy(np.ndarray(shape, np.dtype(dtype), buffer=block.buf).copy())
        finally:
            block.close()
            block.unlink()
    if error is not None:
        raise error
    return out


class PreprocessPool:
    def __init__(self, directory: str | Path, config: VisionConfig, tokens_per_tile: int, preparer=None,
                 processes: bool = True, workers: int | None = None, shared_tiles: bool = True):
        """processes False: threads sharing `preparer` (the encoder's). processes True: worker processes, and
        one image at a time in a thread with `preparer` if given; their tiles come back through shared memory
        unless shared_tiles is False (the result pipe). workers defaults to config.preprocess_threads."""
        self.directory, self.config, self.tokens_per_tile = str(directory), config, tokens_per_tile
        self.processes = processes
        # Arrays of this many bytes or more come back through shared memory (None: all through the pipe).
        self.shared_from: int | None = SHARED_MIN_BYTES if shared_tiles and processes and SHM_DIR.is_dir() else None
        if self.shared_from is not None:
            remove_orphan_blocks()
        self.workers = workers or config.preprocess_threads
        self._preparer = preparer
        if not processes and preparer is None:
            raise InternalError("a thread pool prepares with the encoder's preparer; none was given")
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        # Process mode: the one image prepared in the service process, when it is free (see the module doc).
        self._local = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vision-preprocess-local")
                       if processes and preparer is not None else None)
        self._local_busy = False  # read and set on the event loop only
        self.replaced = 0  # pools replaced after a worker died (a metric for tests and logs)

    @classmethod
    def for_encoder(cls, encoder: "VisionEncoder") -> "PreprocessPool":
        """Threads where the image processor runs on the GPU (one CUDA context, the service's); otherwise
        processes when the encoder runs on CUDA (or config.preprocess_processes says so), threads elsewhere."""
        chosen = encoder.config.preprocess_processes
        if encoder.preparer.device is not None:
            processes = False
        else:
            processes = encoder.device.type == "cuda" if chosen is None else chosen
        return cls(encoder.directory, encoder.config, encoder.tokens_per_tile, encoder.preparer, processes)

    def _new_pool(self) -> concurrent.futures.Executor:
        if not self.processes:
            return concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="vision-preprocess")
        # spawn, not fork: the service process holds CUDA state and threads that a forked child must not inherit.
        return concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(self.directory, self.config, self.tokens_per_tile, os.getpid()))

    def start(self) -> None:
        """Starts every worker process now (each imports torch and loads the image processor: seconds), so the
        first requests do not wait for them. Blocking; a no-op for threads."""
        if not self.processes:
            return
        # Submitted together, before any worker is idle: the executor starts one process per task.
        futures = [self._pool.submit(_ready) for _ in range(self.workers)]
        for f in futures:
            if f.result(timeout=300) != self.tokens_per_tile:
                raise InternalError("an image preprocessing worker started without its image processor")
        log.info("image preprocessing workers started", extra={"fields": {"processes": self.workers}})

    async def prepare(self, source: ImageSource) -> PreparedImage:
        """Decodes and preprocesses one image off the event loop."""
        if not self.processes:
            return await self._in_thread(self._pool, source)
        if self._local is not None and not self._local_busy:
            self._local_busy = True
            try:
                return await self._in_thread(self._local, source)
            finally:
                self._local_busy = False
        tensors, layout = await self._run(_prepare_in_worker, source, self.shared_from)
        return PreparedImage(Tiles(tensors), layout)

    async def _in_thread(self, executor: concurrent.futures.Executor, source: ImageSource) -> PreparedImage:
        ctx = contextvars.copy_context()  # keeps the request id in the thread's log lines
        work = lambda: self._preparer.prepare_source(source)  # noqa: E731
        return await asyncio.get_running_loop().run_in_executor(executor, ctx.run, work)

    async def _run(self, fn, *args):
        """fn(*args) -> (arrays, extra) in a worker process, the arrays as tensors of this process; once more on a
        fresh pool if the pool broke under it."""
        for attempt in (1, 2):
            pool = self._pool
            try:
                return await asyncio.wrap_future(_received(pool.submit(fn, *args)))
            except BrokenProcessPool as e:
                self._replace(pool)
                if attempt == 2:
                    raise InternalError(f"an image preprocessing worker stopped unexpectedly twice while this "
                                        f"image was in its pool ({e}); the image was not processed") from None
            except VlmError:
                raise
            except Exception as e:  # anything else from a worker is ours, not the caller's
                raise InternalError(f"image preprocessing failed: {type(e).__name__}: {e}") from None

    def _replace(self, broken: concurrent.futures.Executor) -> None:
        with self._lock:
            if self._pool is not broken:  # another caller replaced it already
                return
            self._pool = self._new_pool()
            self.replaced += 1
        broken.shutdown(wait=False, cancel_futures=True)
        log.warning("an image preprocessing worker died; its pool was replaced",
                    extra={"fields": {"replaced": self.replaced}})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._local is not None:
            self._local.shutdown(wait=False, cancel_futures=True)


def _received(work: concurrent.futures.Future) -> concurrent.futures.Future:
    """A future of work's (arrays, extra) with the arrays made tensors here, settled in the executor's thread the
    moment the worker's result arrives: its shared-memory blocks are unlinked even if nobody waits any more (a
    cancelled request)."""
    out: concurrent.futures.Future = concurrent.futures.Future()

    def settle(done: concurrent.futures.Future) -> None:
        try:
            arrays, extra = done.result()
            result, error = (_from_shared(arrays), extra), None
        except BaseException as e:  # noqa: BLE001 - handed to the waiter as is (BrokenProcessPool, an image's error)
            result, error = None, e
        if out.set_running_or_notify_cancel():  # False: the waiter cancelled; the blocks are gone all the same
            if error is None:
                out.set_result(result)
            else:
                out.set_exception(error)

    work.add_done_callback(settle)
    out.add_done_callback(lambda f: f.cancelled() and work.cancel())  # not started yet: it never runs
    return out

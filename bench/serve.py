#!/usr/bin/env python3
"""Serving benchmark: the vision + LM gRPC stack under N concurrent image chats, against transformers.

For each variant (fp16, w4a16, w4a16 + int8 KV, w4a16 + int4 KV) and each --vision-max-batch-size,
the stack is started in its own process (`vlmserve serve stack`, free local ports) and driven at
every concurrency level by that many client threads, each streaming one Chat after another: one
512×512 photo (data/images, resized) and a short prompt, a fixed number of output tokens with EOS
ignored. Recorded per level: out tokens/s, requests/s, TTFT p50/p90/p99 and inter-token latency
p50/p99 as the client sees them, failed requests, the service's own time breakdown (queue, vision,
prefill, decode), the vision service's mean batch size and encode time (its Prometheus metrics),
and GPU memory in use (nvidia-smi). The w4a16 checkpoints come from `vlmserve lite auto_awq`.
The peer, transformers `generate` on the same checkpoint, image and output length with batch =
concurrency, runs in the same invocation. Writes JSON, a markdown document and PNG plots; exits
with status 1 when any request failed, and at once when the stack dies.

    python3 bench/serve.py --model-name internvl-2b --out-dir docs/benchmarks/serving   # a GPU machine
    python3 bench/serve.py --model-name llava-7b --out-dir docs/benchmarks/serving      # model (b)
    python3 bench/serve.py --smoke --out-dir /tmp/serve-smoke                          # CPU, a minute
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run_info import git_revision, ints, library_settings, write_atomic  # noqa: E402
from serving.load import STREAMS_PER_CHANNEL, STREAMS_PER_PROCESS, run_level  # noqa: E402
from serving.models import SIZES, add_model_args, describe, write_model  # noqa: E402
from serving.mps import MpsDaemon  # noqa: E402
from serving.report import calls_cell, markdown, plots, threads_cell  # noqa: E402
from serving.stack import ServicesProcesses, StackProcess, host_cpu_seconds, host_load  # noqa: E402

VARIANTS = {"fp16": ("dense", "auto"), "w4a16": ("awq", "auto"), "w4a16-kv8": ("awq", "int8"),
            "w4a16-kv4": ("awq", "int4")}
PROMPT = "Describe this image in detail."
# Low-concurrency levels run at least this many requests: at 1 a level of 16 lasted ~2.5 s on the H100, and its
# throughput moved by a few per cent between runs of the same setting, as much as the 800 tok/s target's margin.
MIN_REQUESTS_PER_LEVEL = 64
CLI = [sys.executable, "-c", "import sys; from vlmserve.cli import main; sys.exit(main())"]


def log(msg: str) -> None:
    print(f"[serve] {msg}", file=sys.stderr, flush=True)


IMAGE_FORMATS = {"png": ("PNG", "image/png", {}), "jpeg": ("JPEG", "image/jpeg", {"quality": 95})}


def image_bytes(path: Path, size: int, fmt: str) -> bytes:
    """The photo resized to size x size and encoded as `fmt` (a 512 x 512 photo is ~360 KB as PNG, whose
    decoding took 9 ms of the vision service's preprocessing on the H100 host; ~60 KB as JPEG)."""
    from PIL import Image

    pil_format, _, options = IMAGE_FORMATS[fmt]
    buf = io.BytesIO()
    Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC).save(buf, format=pil_format, **options)
    return buf.getvalue()


def quantize(src: Path, dst: Path, a) -> Path:
    if (dst / "config.json").is_file():
        return dst
    log(f"quantizing {src} -> {dst}")
    subprocess.run(CLI + ["lite", "auto_awq", str(src), "--work-dir", str(dst), "--w-group-size", str(a.awq_group),
                          "--calib-samples", str(a.calib_samples), "--calib-seqlen", str(a.calib_seqlen)],
                   check=True, cwd=ROOT)
    return dst


def gpu_memory_gib() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.strip().splitlines()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def histogram_delta(before: dict, after: dict, name: str) -> float | None:
    n = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    return (after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)) / n if n > 0 else None


def calls_by_process(before: dict, after: dict) -> dict[str, float]:
    """Calls each process of the LM service finished over a level ("0": the engine's; the others its
    --front-processes): the port is shared by connection, so the shares need not be even. Empty with one process."""
    prefix = "vlmserve_lm_process_calls_handled_total{process="
    return {k[len(prefix):-1]: v - before.get(k, 0.0) for k, v in sorted(after.items()) if k.startswith(prefix)}


def engine_rates(before: dict, after: dict, wall_s: float) -> dict:
    """Engine steps per second and tokens per step over a level (from the LM service's metrics)."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0)
             for k in ("vlmserve_lm_engine_steps", "vlmserve_lm_generation_tokens_total", "vlmserve_lm_prompt_tokens_total")}
    steps = delta["vlmserve_lm_engine_steps"]
    if steps <= 0 or wall_s <= 0:
        return {}
    return {"engine_steps_per_s": steps / wall_s,
            "generated_tokens_per_step": delta["vlmserve_lm_generation_tokens_total"] / steps,
            "prompt_tokens_per_step": delta["vlmserve_lm_prompt_tokens_total"] / steps}


def busiest_threads(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], wall_s: float,
                    top: int = 6) -> dict[str, dict[str, float]]:
    """Cores each thread of each service process kept busy over a level, the busiest `top` per process (threads
    started during the level count from zero; those that ended are not seen)."""
    if wall_s <= 0:
        return {}
    out = {}
    for proc, threads in after.items():
        cores = ((t, (v - before.get(proc, {}).get(t, 0.0)) / wall_s) for t, v in threads.items())
        out[proc] = dict(sorted((tc for tc in cores if tc[1] > 0), key=lambda tc: -tc[1])[:top])
    return out


def py_spy_dumps(stack, path_stem: Path, record_s: float = 0.0) -> None:
    """One `py-spy dump` of every thread of each service process, written beside the logs, or (record_s > 0) a
    `py-spy record` of each for that many seconds, all processes at once, as collapsed stacks with thread ids
    (`<stem>_<process>.pyspy.folded`: one line a stack, its sample count last). py-spy must be on PATH and allowed
    to attach; what it says instead is written when it cannot."""
    running = []
    for proc_name, proc in stack.processes().items():
        name = f"{path_stem.name}_{proc_name}"
        if record_s > 0:
            out = path_stem.with_name(f"{name}.pyspy.folded")
            # Blocking sampling (the process paused ~0.1 ms a sample, 100 a second): --nonblocking read the
            # services' stacks unreliably (a CPU trial kept 189 samples of a run's thousands, with errors).
            cmd = ["py-spy", "record", "--pid", str(proc.pid), "--duration", str(max(1, round(record_s))),
                   "--rate", "100", "--format", "raw", "--threads", "--output", str(out)]
        else:
            out = path_stem.with_name(f"{name}.pyspy.txt")
            cmd = ["py-spy", "dump", "--pid", str(proc.pid)]
        try:
            running.append((out, record_s > 0, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                                stderr=subprocess.STDOUT, text=True)))
        except OSError as e:  # the dump's own file, or the record's message file
            out.with_suffix(".txt").write_text(f"py-spy did not run: {e}\n")
    for out, recording, child in running:
        try:
            text, _ = child.communicate(timeout=record_s + 60)
        except subprocess.TimeoutExpired:
            child.kill()
            text = "py-spy did not finish in time\n"
        if not recording:
            out.write_text(text)
        elif child.returncode != 0 or not out.exists():
            out.with_suffix(".txt").write_text(f"py-spy record failed ({child.returncode}):\n{text}")


def run_variant(name: str, model: Path, kv: str, vision_batch: int, a, image: bytes, out_dir: Path,
                tp: int = 1) -> dict:
    from tqdm.auto import tqdm

    shared = ["--log-level", "warning", "--tp", str(tp)]  # --tp: vision replicas, one per GPU; the LM's split
    vision_flags = ["--vision-max-batch-size", str(vision_batch), *a.vision_flag]
    # Under MPS both services must be on the GPU: "auto" falls back to the CPU where CUDA fails to start (as a
    # client that cannot reach its MPS server does), and the run would measure that under the MPS label.
    engine_device = "cuda" if a.mps else a.engine_device
    if a.mps:
        vision_flags = ["--device", "cuda", *vision_flags]  # a --vision-flag=--device=... after it still wins
    lm_flags = ["--engine-device", engine_device, "--kv-cache-dtype", kv, "--max-batch-size", str(max(a.concurrency)),
                *a.lm_flag]
    if a.layout == "services":
        vision_name = "vision" if a.vision_processes == 1 else f"vision ({a.vision_processes} processes)"
        flags = {vision_name: vision_flags + shared, "lm": lm_flags + shared}
    else:
        flags = lm_flags + vision_flags + shared + a.stack_flag
    label = f"{name} vision-batch {vision_batch}" + (f" tp {tp}" if tp > 1 else "") + (" MPS" if a.mps else "")
    levels = []

    from vlmserve.services import protos

    common = protos.common()

    pb = protos.lm()
    mime = IMAGE_FORMATS[a.image_format][1]
    parts = [pb.ContentPart(image=common.ImageInput(data=image, mime_type=mime)), pb.ContentPart(text=PROMPT)]
    request = pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content=parts)],
                             params=pb.SamplingParams(max_tokens=a.output_tokens, ignore_eos=True,
                                                      **sampling_params(a)))

    log(f"{label}: starting the stack ({model.name}, KV {kv})")
    log_path = out_dir / "logs" / f"{a.stem}_{name}_vb{vision_batch}_tp{tp}.log"
    mps_servers: list[int] = []
    # Left in reverse order: the services stop first, then the MPS daemon they are clients of.
    with contextlib.ExitStack() as running:
        daemon = running.enter_context(MpsDaemon()) if a.mps else None
        env = daemon.client_env if daemon is not None else None
        if a.layout == "services":
            # Under MPS a service that hangs connecting would otherwise hold the run for the usual 900 s.
            stack = ServicesProcesses(model, flags[vision_name], flags["lm"], log_path, env=env,
                                      ready_timeout_s=300 if daemon is not None else 900,
                                      vision_processes=a.vision_processes)
        else:
            stack = StackProcess(model, flags, log_path)
        running.enter_context(stack)
        if daemon is not None:  # both service processes, not just any process, went through this daemon's server
            mps_servers = daemon.require_clients(p.pid for p in stack.processes().values())
            log(f"{label}: the services share the GPU through MPS (server pid {', '.join(map(str, mps_servers))})")
        for c in a.concurrency:
            n = a.requests_per_level or max(4 * c, MIN_REQUESTS_PER_LEVEL)
            warm_before = stack.scrape(stack.lm_metrics_url)
            run_level(stack.address, request, c, min(c, a.warmup), a.timeout, alive=stack.check_alive,
                      streams_per_process=a.streams_per_process, streams_per_connection=a.streams_per_connection)
            # The LM metrics from once the warm-up's requests are counted (a front's arrive in snapshots a second
            # apart), so none of them lands in the level's figures.
            before, lm_before = stack.scrape_vision(), settled_lm_metrics(stack, warm_before, min(c, a.warmup))
            cpu_before, threads_before = stack.cpu_seconds(), stack.thread_cpu_seconds()
            host_before = host_cpu_seconds()
            # The CPU counters bracket the whole level, its client processes' start and end included, so their
            # rates are over this span (the level's own wall_s is shorter: dividing by it overstated them).
            span_start = time.monotonic()
            spy = None
            if a.py_spy_after is not None:  # the dumps land while the level runs (if it runs that long)
                spy = threading.Timer(a.py_spy_after, py_spy_dumps,
                                      (stack, log_path.with_name(f"{log_path.stem}_c{c}"), a.py_spy_record))
                spy.start()
            with tqdm(total=n, desc=f"{label} c={c}", unit="req", leave=False, disable=not sys.stderr.isatty()) as bar:
                result = run_level(stack.address, request, c, n, a.timeout, progress=bar,
                                   streams_per_process=a.streams_per_process,
                                   streams_per_connection=a.streams_per_connection, alive=stack.check_alive)
            if spy is not None:
                spy.cancel()
                spy.join()
            cpu_after, threads_after = stack.cpu_seconds(), stack.thread_cpu_seconds()
            host_after = host_cpu_seconds()
            span_s = time.monotonic() - span_start
            lm_after = settled_lm_metrics(stack, lm_before, n)
            after = stack.scrape_vision()
            s = result.summary(a.output_tokens)
            # Cores each service process kept busy over the level: a process whose Python threads together
            # approach one core may bound the level although the GPU figures show room.
            s["service_cpu_cores"] = {k: (cpu_after[k] - cpu_before[k]) / span_s
                                      for k in cpu_after if k in cpu_before and span_s > 0}
            s["service_thread_cores"] = busiest_threads(threads_before, threads_after, span_s)
            # The whole host's load: services, clients and anything else on it (between runs of the same code,
            # a busier or shared host is what moves the figures most).
            s["host_cpu"] = host_load(host_before, host_after, span_s)
            s.update(engine_rates(lm_before, lm_after, result.wall_s))
            s["lm_calls_by_process"] = calls_by_process(lm_before, lm_after)
            s["service_ttft_mean_s"] = histogram_delta(lm_before, lm_after, "vlmserve_lm_time_to_first_token_seconds")
            s["vision_batch_mean"] = histogram_delta(before, after, "vlmserve_vision_batch_size")
            # Where the vision service ran its image processor (it may refuse the GPU at start-up: its log says why).
            s["vision_preprocess_on_gpu"] = after.get("vlmserve_vision_preprocess_on_gpu")
            s["vision_encode_mean_s"] = histogram_delta(before, after, "vlmserve_vision_encode_seconds")
            s["vision_forward_mean_s"] = histogram_delta(before, after, "vlmserve_vision_batch_seconds")
            s["vision_preprocess_mean_s"] = histogram_delta(before, after, "vlmserve_vision_preprocess_seconds")
            s["vision_batched_encode_mean_s"] = histogram_delta(before, after,
                                                                "vlmserve_vision_batched_encode_seconds")
            s["lm_loop_lag_mean_s"] = histogram_delta(lm_before, lm_after, "vlmserve_event_loop_lag_seconds")
            s["vision_loop_lag_mean_s"] = histogram_delta(before, after, "vlmserve_event_loop_lag_seconds")
            s["gpu_memory_gib"] = gpu_memory_gib()
            levels.append(s)
            ttft = "" if s["ttft_p50_s"] is None else f", TTFT p50 {s['ttft_p50_s'] * 1e3:.0f} ms"
            log(f"{label} c={c}: {s['out_tok_s']:.1f} out tok/s{ttft}, {s['failed']} failed of {s['requests']}")
            log(f"  busiest threads (cores): {threads_cell(s)}")
            if calls_cell(s):
                log(f"  calls by LM process: {calls_cell(s)}")
            if s["failed"]:
                log(f"  errors: {s['errors']}")
    return {"name": label, "flags": flags, "levels": levels, "gil_switch_interval_ms": switch_intervals(flags),
            "mps": a.mps, "mps_servers": mps_servers}


def settled_lm_metrics(stack, before: dict[str, float], requests: int, timeout_s: float = 5.0) -> dict[str, float]:
    """The LM service's metrics once its finished-requests counter has counted the level's requests: with
    --front-processes the fronts' share reaches /metrics in snapshots a second apart. After timeout_s, what it
    has then (a request that failed at the client may never count)."""
    key = 'vlmserve_lm_requests_finished_total{reason=length}'
    deadline = time.monotonic() + timeout_s
    while True:
        after = stack.scrape(stack.lm_metrics_url)
        if after.get(key, 0.0) - before.get(key, 0.0) >= requests or time.monotonic() > deadline:
            return after
        time.sleep(0.1)


def switch_intervals(flags) -> dict[str, float]:
    """Each service process's GIL switch interval: its flag's value, else the CLI's default."""
    from vlmserve.cli.serve import DEFAULT_SWITCH_INTERVAL_MS

    def of(args: list[str]) -> float:
        value = DEFAULT_SWITCH_INTERVAL_MS
        for i, arg in enumerate(args):
            if arg == "--gil-switch-interval-ms" and i + 1 < len(args):
                value = float(args[i + 1])
            elif arg.startswith("--gil-switch-interval-ms="):
                value = float(arg.split("=", 1)[1])
        return value

    return {k: of(v) for k, v in flags.items()} if isinstance(flags, dict) else {"stack": of(flags)}


def sampling_params(a) -> dict:
    """The requests' sampling fields (none: greedy)."""
    if a.temperature <= 0:
        return {}
    out = {"temperature": a.temperature, "top_k": a.top_k}
    if a.top_p < 1:
        out["top_p"] = a.top_p
    return out


def run_peer(model: Path, a, image: bytes) -> list[dict]:
    """transformers generate on the same checkpoint: batch = each of --peer-batches."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from vlmserve.prompt_builder import Layout, PromptBuilder
    from vlmserve.vision.encoder import VisionEncoder

    device = "cuda" if torch.cuda.is_available() and a.engine_device != "cpu" else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    img = Image.open(io.BytesIO(image)).convert("RGB")
    encoder = VisionEncoder(model)
    encoder.warmup()
    lay = encoder.prepare(img).layout
    # The vision service's own processor settings (tiling), so both see the same tiles.
    pixels = encoder.image_processor(images=[img], return_tensors="pt", **encoder.processor_kwargs)["pixel_values"]
    del encoder
    layout = Layout(lay.num_tokens, lay.tokens_per_tile, lay.grid_rows, lay.grid_cols, lay.has_global_tile)
    builder = PromptBuilder(model, SIZES[a.model_name]["family"])
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    ids = builder.build(msgs, [layout]).token_ids
    hf = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(device).eval()
    # The same sampling as the stack's requests (transformers' own filters; greedy when --temperature is 0).
    peer_sampling = (dict(do_sample=True, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p)
                     if a.temperature > 0 else dict(do_sample=False))
    out = []
    for b in a.peer_batches:
        input_ids = torch.tensor([ids] * b, device=device)
        pv = pixels.to(device, dtype).repeat(b, 1, 1, 1)

        def timed(n):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                hf.generate(input_ids=input_ids, pixel_values=pv, attention_mask=torch.ones_like(input_ids),
                            max_new_tokens=n, min_new_tokens=n, pad_token_id=0, **peer_sampling)
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        try:
            timed(2)  # warm-up
            ttft, total = timed(1), timed(a.output_tokens)
        except torch.OutOfMemoryError:
            log(f"transformers batch {b}: out of memory")
            break
        out.append({"batch": b, "ttft_s": ttft, "wall_s": total, "out_tok_s": b * a.output_tokens / total})
        log(f"transformers batch {b}: {out[-1]['out_tok_s']:.1f} out tok/s, TTFT {ttft * 1e3:.0f} ms")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--variants", default="fp16,w4a16,w4a16-kv8,w4a16-kv4")
    ap.add_argument("--vision-batch", type=ints, default=[16, 1], help="--vision-max-batch-size values")
    ap.add_argument("--concurrency", type=ints, default=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--requests-per-level", type=int, default=0,
                    help=f"0: max(4 x concurrency, {MIN_REQUESTS_PER_LEVEL}); a level's first wave arrives at once, "
                         "later ones spread out")
    ap.add_argument("--warmup", type=int, default=4, help="warm-up requests per level (at most the concurrency)")
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="sampled requests at this temperature (0, the default: greedy)")
    ap.add_argument("--top-p", type=float, default=1.0, help="with --temperature: nucleus filter (1: off)")
    ap.add_argument("--top-k", type=int, default=0, help="with --temperature: top-k filter (0: off)")
    ap.add_argument("--image", type=Path, default=ROOT / "python/vlmserve/data/images/chelsea.png")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--image-format", choices=sorted(IMAGE_FORMATS), default="jpeg",
                    help="how the request carries the image (JPEG at quality 95 for jpeg, as photos are sent)")
    ap.add_argument("--engine-device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--awq-group", type=int, default=128)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--peer-batches", type=ints, default=[1, 16], help="transformers batch sizes (empty: no peer)")
    ap.add_argument("--no-peer", action="store_true", help="skip transformers")
    ap.add_argument("--timeout", type=float, default=600.0, help="deadline of one request, seconds")
    ap.add_argument("--streams-per-process", type=int, default=STREAMS_PER_PROCESS,
                    help="above this concurrency the load comes from several client processes, this many streams each")
    ap.add_argument("--streams-per-connection", type=int, default=STREAMS_PER_CHANNEL,
                    help="streams sharing one client connection (the LM's front processes share connections, not "
                         "calls: with few connections their shares are uneven)")
    ap.add_argument("--layout", choices=["stack", "services"], default=None,
                    help="services (default): `serve vision` and `serve lm` as two processes, the compose file's "
                         "layout; stack: `vlmserve serve stack`, both services in one process (--smoke's default). "
                         "At concurrency 64/256 on the H200 two processes gave 38 %% / 19 %% more throughput "
                         "(docs/benchmarks/serving/README.md)")
    ap.add_argument("--vision-processes", type=int, default=1,
                    help="with --layout services: this many vision services (replicas on the same GPU, each its own "
                         "process and ports), the LM service's --vision-addr listing them all")
    ap.add_argument("--mps", action="store_true",
                    help="with --layout services: the two service processes share the GPU through NVIDIA MPS (a "
                         "control daemon of the run's own), so their kernels run side by side instead of in time "
                         "slices (bench/serving/mps.py); the run fails if the services do not connect through it")
    ap.add_argument("--stack-flag", action="append", default=[], help="extra flag for `vlmserve serve stack` only")
    ap.add_argument("--vision-flag", action="append", default=[], help="extra flag for the vision service (any layout)")
    ap.add_argument("--lm-flag", action="append", default=[], help="extra flag for the LM service (any layout)")
    ap.add_argument("--tp", type=ints, default=[1],
                    help="tensor-parallel sizes, each variant run once per value in the same run (the stack's "
                         "--tp: the LM split over that many GPUs, one vision replica on each)")
    ap.add_argument("--py-spy-after", type=float, default=None,
                    help="seconds into each timed level at which to write a py-spy dump of each service process "
                         "(py-spy on PATH; files beside the logs)")
    ap.add_argument("--py-spy-record", type=float, default=0.0, metavar="S",
                    help="with --py-spy-after: a py-spy record of S seconds of each service process instead of a "
                         "dump (collapsed stacks with thread ids, beside the logs)")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--stem", default=None, help="file name stem (default: model name)")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown and plots from the JSON")
    ap.add_argument("--smoke", action="store_true",
                    help="the model's family at toy size on the CPU (with --mps: on the GPU through MPS): fp16 and "
                         "w4a16, concurrency 1 and 2, 8 tokens (CI)")
    a = ap.parse_args()
    if a.smoke:
        # The chosen model's family at toy size.
        a.model_name = SIZES[a.model_name]["family"] + "-tiny"
        a.variants, a.vision_batch, a.concurrency = "fp16,w4a16", [4], [1, 2]
        a.output_tokens, a.requests_per_level, a.warmup, a.awq_group = 8, 4, 1, 64
        a.calib_samples, a.calib_seqlen, a.peer_batches = 4, 64, [1, 2]
        # On the CPU, except with --mps: then the toy stack on the GPU through MPS (a quick check of that path).
        a.engine_device = "cuda" if a.mps else "cpu"
        a.image_size = 64
    a.layout = a.layout or ("stack" if a.smoke else "services")
    if a.stack_flag and a.layout != "stack":
        ap.error("--stack-flag applies to --layout stack only; use --vision-flag / --lm-flag")
    if a.vision_processes != 1 and (a.layout != "services" or a.vision_processes < 1):
        ap.error("--vision-processes applies to --layout services only, and must be >= 1")
    if a.mps and a.layout != "services":
        ap.error("--mps applies to --layout services only (one process has one CUDA context: nothing to share)")
    if a.mps and a.engine_device == "cpu":
        ap.error("--mps shares a GPU: it needs --engine-device cuda (or auto, which it makes cuda)")
    if a.streams_per_connection < 1 or a.streams_per_process < 1:
        ap.error("--streams-per-connection and --streams-per-process must be at least 1")
    a.stem = a.stem or a.model_name
    if a.render:
        r = json.loads((a.out_dir / f"{a.stem}.json").read_text())
        (a.out_dir / f"{a.stem}.md").write_text(markdown(r, plots(r, a.out_dir, a.stem)))
        return 0
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if not (a.temperature >= 0 and 0 < a.top_p <= 1 and a.top_k >= 0):
        ap.error(f"--temperature must be >= 0, --top-p in (0, 1], --top-k >= 0; got {a.temperature}, {a.top_p}, "
                 f"{a.top_k}")
    a.out_dir.mkdir(parents=True, exist_ok=True)

    dense = write_model(a.work / a.model_name, a.model_name)
    models = {"dense": dense}
    if any(VARIANTS[v][0] == "awq" for v in variants):
        models["awq"] = quantize(dense, a.work / f"{a.model_name}-awq-g{a.awq_group}", a)
    image = image_bytes(a.image, a.image_size, a.image_format)
    device = "cpu"
    if a.engine_device != "cpu":
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    r = {"meta": {"command": "python3 bench/serve.py " + " ".join(sys.argv[1:]),
                  "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "device": device, "git": git_revision(), "model_name": a.model_name,
                  "streams_per_process": a.streams_per_process, "streams_per_connection": a.streams_per_connection,
                  "model_desc": describe(a.model_name), "image": a.image.name, "image_size": a.image_size,
                  "image_format": a.image_format, "image_bytes": len(image),
                  "prompt": PROMPT, "output_tokens": a.output_tokens, "warmup_requests": a.warmup,
                  "sampling": sampling_params(a),
                  "library_settings": library_settings()},
         "variants": [], "peer": []}

    def save() -> None:
        write_atomic(a.out_dir / f"{a.stem}.json", json.dumps(r, indent=2))

    status = 0
    # A time limit's SIGTERM (bench/gpu_session.sh's steps) ends the run like an error: the services and the MPS
    # daemon are stopped on the way out, and what was measured is written with the reason.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        for v in variants:
            kind, kv = VARIANTS[v]
            for vb in a.vision_batch:
                for tp in a.tp:
                    r["variants"].append(run_variant(v, models[kind], kv, vb, a, image, a.out_dir, tp))
                    save()
        if a.peer_batches and not a.no_peer:
            r["peer"] = run_peer(dense, a, image)
    except RuntimeError as e:  # the stack died or never came up: report what was measured, fail
        log(f"ABORTED: {e}")
        r["aborted"] = str(e)
        status = 1
    save()
    names = plots(r, a.out_dir, a.stem) if r["variants"] else []
    (a.out_dir / f"{a.stem}.md").write_text(markdown(r, names)
                                            + (f"\n**Run aborted:** {r['aborted']}\n" if "aborted" in r else ""))
    failed = sum(lv["failed"] for v in r["variants"] for lv in v["levels"])
    if failed:
        log(f"{failed} request(s) failed: see {a.out_dir / (a.stem + '.md')}")
        status = 1
    return status


class Terminated(RuntimeError):
    pass


def _terminated(signum, frame):
    raise Terminated(f"terminated by signal {signum} (a time limit?) before the run finished")


if __name__ == "__main__":
    sys.exit(main())

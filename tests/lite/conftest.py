"""Tiny models with a tokenizer (a byte-level BPE of 300 tokens trained on
WikiText-2, fits the tiny models' vocabulary of 320), and a reader that turns
an AWQ directory back into a full-precision one transformers loads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tiny_models import write_text_model
from vlmserve.awq_format import dequantize
from vlmserve.checkpoint import Checkpoint
from vlmserve.lite.auto_awq import AwqOptions


@pytest.fixture(scope="session")
def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vlmserve.lite.datasets import builtin_path

    text = builtin_path("wikitext2", "calibration").read_text(encoding="utf-8")[:100_000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def lite_model(tmp_path_factory, byte_tokenizer):
    """lite_model(family, seed=0, **overrides) -> a tiny text model directory with a tokenizer (built once)."""
    made: dict = {}

    def make(family: str, seed: int = 0, **overrides) -> Path:
        key = (family, seed, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in made:
            d = tmp_path_factory.mktemp(f"lite-{family}")
            write_text_model(d, family, seed, **overrides)
            byte_tokenizer.save_pretrained(d)
            made[key] = d
        return made[key]

    return make


def with_tokenizer(directory: Path, tokenizer) -> Path:
    tokenizer.save_pretrained(directory)
    return directory


def small_options(**overrides) -> AwqOptions:
    kw = dict(calib_samples=8, calib_seqlen=64, batch_size=4, search_samples=4, progress=False)
    kw.update(overrides)
    return AwqOptions(**kw)


def dequantized_state(awq_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an AWQ directory, the 4-bit linears dequantized to float32 `.weight`s."""
    ck = Checkpoint(awq_dir)
    out = {}
    try:
        for key in ck.keys():
            if key.endswith((".qzeros", ".scales")):
                continue
            if key.endswith(".qweight"):
                base = key[: -len(".qweight")]
                w = dequantize(ck.array(key), ck.array(base + ".qzeros"), ck.array(base + ".scales"))
                out[base + ".weight"] = torch.from_numpy(w)
            elif ck.ref(key).dtype == "BF16":
                out[key] = torch.from_numpy(ck.array(key).copy().view("int16")).view(torch.bfloat16).float()
            else:
                out[key] = torch.from_numpy(ck.array(key).copy()).float()
    finally:
        ck.close()
    return out


def write_dequantized(awq_dir: Path, out: Path) -> Path:
    """A float32 checkpoint transformers loads with from_pretrained (no AWQ kernels needed)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(dequantized_state(awq_dir), str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in awq_dir.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy2(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out

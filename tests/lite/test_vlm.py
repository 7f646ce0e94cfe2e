"""VLM checkpoints: only the language model's linears change; the vision tower
and projector stay bit-identical; the engine serves the result."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import small_options, with_tokenizer, write_dequantized
from tiny_models import write_text_model
from tiny_vlms import write_idefics3, write_internvl_chat, write_internvl_hf, write_llava
from vlmserve import Engine, EngineConfig, GenerationConfig
from vlmserve.checkpoint import Checkpoint
from vlmserve.lite.auto_awq import auto_awq
from vlmserve.model_spec import PROJECTIONS, load_spec

PROMPT = np.random.default_rng(13).integers(3, 299, size=21).tolist()
VLMS = {
    "llava": write_llava,
    "idefics3": write_idefics3,
    "smolvlm": lambda d: write_idefics3(d, smolvlm=True),
    "internvl_hf": write_internvl_hf,
    "internvl_chat": lambda d: write_internvl_chat(d, write_text_model(d.parent / "qwen2", "qwen2_bias_tied", 4)),
}


def _lm_key(spec, key: str) -> bool:
    return key.startswith(spec.decoder_prefix) or key in ("lm_head.weight", "language_model.lm_head.weight")


@pytest.mark.parametrize("name", sorted(VLMS))
def test_vision_weights_bit_identical_and_engine_loads(tmp_path, byte_tokenizer, name):
    src = with_tokenizer(VLMS[name](tmp_path / "vlm"), byte_tokenizer)
    dst = tmp_path / "awq"
    auto_awq(src, dst, small_options(w_group_size=64, search_scale=True))
    a, b = Checkpoint(src), Checkpoint(dst)
    spec = load_spec(src, a)
    vision = [k for k in a.keys() if not _lm_key(spec, k)]
    assert vision  # the tower and projector are there
    for key in vision:
        assert b.ref(key).dtype == a.ref(key).dtype and b.ref(key).shape == a.ref(key).shape, key
        assert a.array(key).tobytes() == b.array(key).tobytes(), key
    linear = [f"{spec.decoder_prefix}layers.{i}.{blk}.{p}" for i in range(spec.num_layers)
              for blk, projs in PROJECTIONS.items() for p in projs]
    assert all(k + ".qweight" in b and k + ".weight" not in b for k in linear)
    assert a.array(spec.decoder_prefix + "embed_tokens.weight").tobytes() == \
        b.array(spec.decoder_prefix + "embed_tokens.weight").tobytes()
    a.close()
    b.close()
    cfg_a, cfg_b = (json.loads((d / "config.json").read_text()) for d in (src, dst))
    q = cfg_b.pop("quantization_config")
    assert cfg_a == cfg_b and q["quant_method"] == "awq" and q["modules_to_not_convert"]
    with Engine(dst, EngineConfig(device="cpu", num_kv_blocks=32, block_size=16)) as eng:
        assert eng.spec.awq_group_size == 64
        assert len(eng.generate(PROMPT, GenerationConfig(max_new_tokens=4, ignore_eos=True)).token_ids) == 4


@pytest.mark.parametrize("name", ["llava", "idefics3"])
def test_dequantized_vlm_loads_in_transformers_and_matches_the_engine(tmp_path, byte_tokenizer, name):
    from transformers import AutoModelForImageTextToText

    src = with_tokenizer(VLMS[name](tmp_path / "vlm"), byte_tokenizer)
    dst = tmp_path / "awq"
    auto_awq(src, dst, small_options(w_group_size=64))
    model = AutoModelForImageTextToText.from_pretrained(write_dequantized(dst, tmp_path / "deq"),
                                                        dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([PROMPT])).logits[0].numpy()
    with Engine(dst, EngineConfig(device="cpu", num_kv_blocks=32, block_size=16)) as eng:
        out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=1, return_logits=True))
    np.testing.assert_allclose(out.logits, ref, atol=3e-4 * np.abs(ref).max(), rtol=3e-4)

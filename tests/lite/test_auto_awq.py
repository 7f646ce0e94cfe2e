"""auto_awq on tiny random models: the written tensors, the engine and
transformers on the output, search vs plain smoothing, determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import dequantized_state, small_options, write_dequantized
from tiny_models import greedy_tokens, load_hf
from vlmserve import Engine, EngineConfig, GenerationConfig
from vlmserve.awq_format import dequantize
from vlmserve.checkpoint import Checkpoint
from vlmserve.lite.auto_awq import auto_awq
from vlmserve.lite.auto_awq import _heads
from vlmserve.lite.smoothing import GROUPS, LINEARS, scaled_tensors
from vlmserve.model_spec import load_spec

PROMPT = np.random.default_rng(5).integers(3, 299, size=23).tolist()


def _source_state(directory, prefix, layer):
    ck = Checkpoint(directory)
    try:
        pre = f"{prefix}layers.{layer}."
        return {k[len(pre):]: torch.from_numpy(ck.array(k).copy()) for k in ck.keys() if k.startswith(pre)}
    finally:
        ck.close()


@pytest.mark.parametrize("family,group", [("llama_gqa_hd128", 128), ("qwen2_bias_tied", 64), ("llama_mqa", 64)])
def test_tensors_dequantize_to_within_a_step_of_the_scaled_weights(lite_model, tmp_path, family, group):
    src = lite_model(family)
    summary = auto_awq(src, tmp_path / "awq", small_options(w_group_size=group))
    ck = Checkpoint(src)
    spec = load_spec(src, ck)
    ck.close()
    heads = _heads(spec)
    out = Checkpoint(tmp_path / "awq")
    for r in summary.layers:
        scales = {g.name: torch.from_numpy(r.scales[g.name]) for g in GROUPS}
        expected = scaled_tensors(_source_state(src, spec.decoder_prefix, r.index), scales, heads)
        pre = f"{spec.decoder_prefix}layers.{r.index}."
        for name in LINEARS:
            w = expected[f"{name}.weight"].numpy()
            qs = [out.array(f"{pre}{name}.{p}") for p in ("qweight", "qzeros", "scales")]
            step = np.repeat(qs[2].astype(np.float32).T, group, axis=1)
            err = np.abs(dequantize(*qs) - w)
            assert (err <= step * 1.0 + 1e-6).all(), name  # rounding, plus the zero point's own rounding
            assert np.median(err / step) < 0.3
        for key in ("input_layernorm.weight", "post_attention_layernorm.weight") + (
                ("self_attn.v_proj.bias",) if family.startswith("qwen2") else ()):
            np.testing.assert_array_equal(out.array(pre + key), expected[key].numpy())
    out.close()
    assert all(0 < r.error < 0.5 for r in summary.layers)


@pytest.mark.parametrize("family,group,search", [("llama_gqa_hd128", 128, False), ("qwen2_bias_tied", 64, True),
                                                 ("mistral_sliding", 64, True)])
def test_engine_runs_the_output_like_transformers_dequantized(lite_model, tmp_path, family, group, search):
    src = lite_model(family)
    dst = tmp_path / "awq"
    auto_awq(src, dst, small_options(w_group_size=group, search_scale=search, search_clip=search))
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                                          "version": "gemm", "modules_to_not_convert": []}
    assert (dst / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".awq.partial-*"))
    ref = load_hf(write_dequantized(dst, tmp_path / "dequantized"))
    with torch.no_grad():
        expected = torch.tensor(PROMPT + greedy_tokens(ref, 8, PROMPT))
        ref_logits = ref(expected[None, :-1]).logits[0].numpy()
    with Engine(dst, EngineConfig(device="cpu", num_kv_blocks=32, block_size=16)) as eng:
        assert eng.spec.awq_group_size == group
        out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=8, ignore_eos=True, return_logits=True))
    assert out.token_ids == expected[len(PROMPT):].tolist()
    np.testing.assert_allclose(out.logits, ref_logits, atol=3e-4 * np.abs(ref_logits).max(), rtol=3e-4)


@pytest.mark.parametrize("family", ["llama_gqa_hd128", "llama_mha_hd64"])
def test_search_scale_never_gives_a_larger_block_error(lite_model, tmp_path, family):
    src = lite_model(family, num_hidden_layers=3)
    plain = auto_awq(src, tmp_path / "plain", small_options(w_group_size=64))
    search = auto_awq(src, tmp_path / "search", small_options(w_group_size=64, search_scale=True))
    for r in search.layers:  # each layer: both candidates on the same inputs, all calibration tokens
        assert r.error <= r.plain_error
        assert set(r.alphas) == {"qkv", "o", "gate_up", "down"}
    # Layer 0 sees identical inputs in both runs.
    assert search.layers[0].error <= plain.layers[0].error
    assert search.layers[0].plain_error == pytest.approx(plain.layers[0].error, rel=1e-6)


def test_deterministic_for_a_seed(lite_model, tmp_path):
    src = lite_model("llama_gqa_hd128")
    opts = dict(w_group_size=128, search_scale=True, seed=7)
    auto_awq(src, tmp_path / "a", small_options(**opts))
    auto_awq(src, tmp_path / "b", small_options(**opts))
    auto_awq(src, tmp_path / "c", small_options(**dict(opts, seed=8)))
    a, b, c = (dequantized_state(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bf16_tensors_stay_bf16_and_bit_identical(tmp_path, byte_tokenizer):
    from tiny_models import write_text_model

    src = write_text_model(tmp_path / "bf16", "llama_tied", 0, dtype=torch.bfloat16)
    byte_tokenizer.save_pretrained(src)
    dst = tmp_path / "awq"
    auto_awq(src, dst, small_options())
    a, b = Checkpoint(src), Checkpoint(dst)
    assert b.ref("model.embed_tokens.weight").dtype == "BF16"
    np.testing.assert_array_equal(a.array("model.embed_tokens.weight"), b.array("model.embed_tokens.weight"))
    assert b.ref("model.layers.0.input_layernorm.weight").dtype == "BF16"
    a.close()
    b.close()
    with Engine(dst, EngineConfig(device="cpu", num_kv_blocks=16, block_size=16)) as eng:
        assert len(eng.generate(PROMPT, GenerationConfig(max_new_tokens=4, ignore_eos=True)).token_ids) == 4

"""AWQ 4-bit checkpoints in the AutoAWQ "gemm" layout: packing, and the engine
against a reference that runs the dequantized weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tiny_models import greedy_tokens, load_hf
from vlmserve import Engine, EngineConfig, GenerationConfig
from vlmserve.awq_checkpoint import write_awq_checkpoint
from vlmserve.awq_format import dequantize, pack_int4, quantize_rtn, unpack_int4
from vlmserve.checkpoint import Checkpoint


def test_pack_order_is_autoawq():
    """Nibble i of each int32 holds column 8c + (0,2,4,6,1,3,5,7)[i]."""
    codes = np.arange(8, dtype=np.uint8)[None, :]  # column j holds code j
    packed = pack_int4(codes).view(np.uint32)[0, 0]
    nibbles = [(packed >> (4 * i)) & 15 for i in range(8)]
    assert nibbles == [0, 2, 4, 6, 1, 3, 5, 7]
    rng = np.random.default_rng(1)
    c = rng.integers(0, 16, size=(7, 48), dtype=np.uint8)
    assert (unpack_int4(pack_int4(c)) == c).all()


@pytest.mark.parametrize("group", [64, 128])
def test_rtn_error_is_within_half_a_step(group):
    rng = np.random.default_rng(group)
    w = rng.normal(size=(96, 256)).astype(np.float32)
    qweight, qzeros, scales = quantize_rtn(w, group)
    assert qweight.shape == (256, 12) and qzeros.shape == (256 // group, 12) and scales.shape == (256 // group, 96)
    step = np.repeat(scales.astype(np.float32).T, group, axis=1)
    err = np.abs(dequantize(qweight, qzeros, scales) - w)
    # Half a step from rounding, plus the zero point's own rounding at the range ends.
    assert (err <= step * 1.0 + 1e-6).all()
    assert np.median(err / step) < 0.3


def awq_model(tiny_model_dir, tmp_path, family: str, group: int):
    src = tiny_model_dir(family)
    dst = write_awq_checkpoint(src, tmp_path / f"awq{group}", group, lambda key, w: quantize_rtn(w, group))
    # The reference: the same HF model with every quantized weight replaced by its dequantized value.
    ref = load_hf(src)
    ck = Checkpoint(dst)
    with torch.no_grad():
        for name, module in ref.named_modules():
            if name + ".qweight" in ck:
                w = dequantize(ck.array(name + ".qweight"), ck.array(name + ".qzeros"), ck.array(name + ".scales"))
                module.weight.copy_(torch.from_numpy(w))
    return dst, ref


@pytest.mark.parametrize("family,group", [("llama_gqa_hd128", 128), ("qwen2_bias_tied", 64),
                                          ("llama_mha_hd64", 64)])
def test_engine_matches_dequantized_reference(tiny_model_dir, tmp_path, family, group):
    dst, ref = awq_model(tiny_model_dir, tmp_path, family, group)
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                                          "version": "gemm", "modules_to_not_convert": []}
    prompt = np.random.default_rng(5).integers(3, 320, size=19).tolist()
    with torch.no_grad():
        expected = torch.tensor(prompt + greedy_tokens(ref, 12, prompt))
        ref_logits = ref(expected[None, :-1]).logits[0].numpy()
    with Engine(dst, EngineConfig(device="cpu", num_kv_blocks=32, block_size=16)) as eng:
        assert eng.spec.awq_group_size == group
        out = eng.generate(prompt, GenerationConfig(max_new_tokens=12, ignore_eos=True, return_logits=True))
    assert out.token_ids == expected[len(prompt):].tolist()
    # w = q*s + (-z*s) in the engine vs (q - z)*s in the reference: a few ulps per weight.
    np.testing.assert_allclose(out.logits, ref_logits, atol=3e-4 * np.abs(ref_logits).max(), rtol=3e-4)


def test_awq_batch_and_prefill_paths_agree(tiny_model_dir, tmp_path):
    """Many rows (prefill: panel dequantized once) and few rows (decode: dequantized
    in registers) give the same numbers."""
    dst, _ = awq_model(tiny_model_dir, tmp_path, "llama_mha_hd64", 64)
    prompt = np.random.default_rng(9).integers(3, 320, size=40).tolist()
    gen = GenerationConfig(max_new_tokens=3, ignore_eos=True, return_logits=True)
    with Engine(dst, EngineConfig(device="cpu", num_kv_blocks=32, block_size=16)) as eng:
        whole = eng.generate(prompt, gen)
    with Engine(dst, EngineConfig(device="cpu", num_kv_blocks=32, block_size=16, max_num_batched_tokens=3)) as eng:
        small = eng.generate(prompt, gen)
    np.testing.assert_allclose(small.logits, whole.logits, atol=1e-5, rtol=1e-5)

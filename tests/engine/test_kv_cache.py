"""Quantized KV cache (int8/int4, per token and KV head, asymmetric fp16
scale/zero): the engine against a reference that quantizes K/V the same way,
and the deviation from an unquantized cache, reported and bounded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import kv_fake_quant, reference_logits
from tiny_models import load_hf
from vlmserve import Engine, EngineConfig, GenerationConfig

PROMPT = np.random.default_rng(21).integers(3, 320, size=31).tolist()
GEN = GenerationConfig(max_new_tokens=16, ignore_eos=True, return_logits=True)


def run(d, kv: str, **kw):
    with Engine(d, EngineConfig(device="cpu", num_kv_blocks=32, block_size=16, kv_cache_dtype=kv, **kw)) as eng:
        return eng.generate(PROMPT, GEN)


@pytest.mark.parametrize("family", ["llama_gqa_hd128", "llama_mha_hd64", "mistral_sliding"])
def test_reference_without_quantization_matches_transformers(tiny_model_dir, family):
    hf = load_hf(tiny_model_dir(family))
    with torch.no_grad():
        ours = reference_logits(hf, PROMPT).numpy()
        theirs = hf(torch.tensor([PROMPT])).logits[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max(), rtol=1e-4)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n", [64, 128, 7])
def test_quantizer_is_bit_exact_with_reference(bits, n):
    """The cache's quantizer and the reference's agree code for code on fresh random rows
    (including a constant row and rows with outliers)."""
    import ctypes

    from vlmserve import _native

    rng = np.random.default_rng(bits * 1000 + n)
    rows = [rng.normal(size=n) * rng.uniform(0.01, 30), np.full(n, 0.37), rng.standard_cauchy(size=n)]
    for x in rows:
        x = x.astype(np.float32)
        nbytes = n if bits == 8 else (n + 1) // 2
        codes = np.zeros(nbytes, dtype=np.uint8)
        s, z = ctypes.c_uint16(), ctypes.c_uint16()
        assert _native.lib().vlm_kv_quantize(x.ctypes.data, n, bits, codes.ctypes.data, ctypes.byref(s),
                                             ctypes.byref(z)) == 0
        scale = np.array([s.value], dtype=np.uint16).view(np.float16).astype(np.float32)[0]
        zero = np.array([z.value], dtype=np.uint16).view(np.float16).astype(np.float32)[0]
        if bits == 4:
            codes = np.stack([codes & 15, codes >> 4], axis=1).reshape(-1)[:n]
        ref = kv_fake_quant(torch.from_numpy(x), bits).numpy()
        np.testing.assert_array_equal(codes.astype(np.float32) * scale + zero, ref)


@pytest.mark.parametrize("family", ["llama_gqa_hd128", "llama_mha_hd64", "mistral_sliding"])
@pytest.mark.parametrize("kv,bits", [("int8", 8), ("int4", 4)])
def test_quantized_cache_matches_reference(tiny_model_dir, family, kv, bits):
    """Whole model: the engine with a quantized cache tracks the reference that quantizes
    the same way far more closely than it tracks an unquantized cache. (Exact agreement
    is impossible: K computed in a different summation order can land an ulp across a
    rounding boundary, and one code then moves by a whole step.)"""
    d = tiny_model_dir(family)
    hf = load_hf(d)
    out = run(d, kv)
    seq = PROMPT + out.token_ids[:-1]
    ref_q = reference_logits(hf, seq, kv_bits=bits).numpy()
    ref_fp = reference_logits(hf, seq).numpy()
    scale = np.abs(ref_q).max()
    err_same = np.abs(out.logits - ref_q).mean() / scale
    err_fp = np.abs(out.logits - ref_fp).mean() / scale
    print(f"{family} KV {kv}: mean |engine - quantized reference| = {err_same:.2e}, "
          f"mean |engine - fp reference| = {err_fp:.2e} (of max |logit|)")
    assert err_same < 0.2 * err_fp
    # Rows before any code could differ (the first prompt rows) agree to fp32 accuracy.
    np.testing.assert_allclose(out.logits[:4], ref_q[:4], atol=1e-4 * scale, rtol=1e-4)


@pytest.mark.parametrize("kv,bound", [("fp16", 0.002), ("bf16", 0.02), ("int8", 0.03), ("int4", 0.5)])
def test_deviation_from_full_precision_cache_is_bounded(tiny_model_dir, kv, bound):
    """Teacher-forced on one sequence: how far quantizing the cache moves the logits."""
    d = tiny_model_dir("llama_gqa_hd128")
    hf = load_hf(d)
    seq = PROMPT + list(range(5, 21))
    bits = {"int8": 8, "int4": 4}.get(kv)
    full = reference_logits(hf, seq).numpy()
    with Engine(d, EngineConfig(device="cpu", num_kv_blocks=32, block_size=16, kv_cache_dtype=kv)) as eng:
        out = eng.generate(seq, GenerationConfig(max_new_tokens=1, return_logits=True))
    dev = np.abs(out.logits - full).max() / np.abs(full).max()
    print(f"KV {kv}: max |logit - fp32-cache logit| / max|logit| = {dev:.4f} (bound {bound})")
    assert dev < bound


def test_cache_stats_and_budget(tiny_model_dir):
    d = tiny_model_dir("llama_mha_hd64")
    sizes = {}
    for kv in ("auto", "fp16", "int8", "int4"):
        with Engine(d, EngineConfig(device="cpu", num_kv_blocks=10, block_size=16, kv_cache_dtype=kv)) as eng:
            stats = eng.stats()
            sizes[kv] = stats.kv_cache_bytes
            # The CPU backend keeps no extra copies of weights for other GEMMs.
            assert stats.dense_prefill_weight_bytes == 0 and stats.cutlass_weight_bytes == 0
            assert stats.gemv_weight_bytes == 0
    # 2 layers x 4 KV heads x 64 dims x 16 slots x 10 blocks x (K, V); int rows carry 4 bytes of scale+zero.
    rows = 2 * 4 * 16 * 10 * 2
    assert sizes == {"auto": rows * 64 * 4, "fp16": rows * 64 * 2, "int8": rows * (64 + 4), "int4": rows * (32 + 4)}
    # A fractional budget picks the block count itself, capped at what max_batch_size requests can use.
    with Engine(d, EngineConfig(device="cpu", cache_max_entry_count=0.5, block_size=16, max_batch_size=2,
                                max_model_len=128)) as eng:
        assert eng.stats().total_blocks == 2 * 128 // 16


def test_quant_policy_is_lmdeploy_spelling():
    assert EngineConfig(quant_policy=8).kv_cache_dtype == "int8"
    assert EngineConfig(quant_policy=4).kv_cache_dtype == "int4"
    assert EngineConfig(quant_policy=0).kv_cache_dtype == "auto"
    with pytest.raises(ValueError, match="contradicts"):
        EngineConfig(quant_policy=8, kv_cache_dtype="int4")

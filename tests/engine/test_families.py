"""The engine against transformers, fp32, on tiny seeded-random models of each
family: logits for every prompt position and 16 decode steps, and greedy tokens."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from tiny_models import TEXT_FAMILIES, greedy_tokens, load_hf
from vlmserve import Engine, EngineConfig, GenerationConfig

# fp32 everywhere; the engine reduces in a different order than torch's BLAS.
ATOL = 2e-4
RTOL = 2e-4


def engine_config(**kw) -> EngineConfig:
    base = dict(device="cpu", num_kv_blocks=64, block_size=16, max_batch_size=8)
    base.update(kw)
    return EngineConfig(**base)


def prompt_for(seed: int, n: int = 23, vocab: int = 320) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, size=n).tolist()


@pytest.mark.parametrize("family", sorted(TEXT_FAMILIES))
def test_logits_and_greedy_match_transformers(tiny_model_dir, family):
    d = tiny_model_dir(family)
    hf = load_hf(d)
    # A stable seed: str hashes change from one Python process to the next.
    prompt = prompt_for(zlib.crc32(family.encode()) % 1000)
    expected_new = greedy_tokens(hf, 16, prompt)
    with torch.no_grad():
        hf_logits = hf(torch.tensor([prompt + expected_new[:-1]])).logits[0].numpy()

    with Engine(d, engine_config()) as eng:
        out = eng.generate(prompt, GenerationConfig(max_new_tokens=16, ignore_eos=True, return_logits=True))
    assert out.logits.shape == hf_logits.shape
    atol = ATOL * np.abs(hf_logits).max()
    agree = _agreeing_prefix(out.token_ids, expected_new)
    if agree < len(expected_new):
        # Greedy may only part ways where transformers itself saw a near tie: the
        # two best logits closer than the tolerance the logits are held to.
        top2 = np.sort(hf_logits[len(prompt) - 1 + agree])[-2:]
        assert top2[1] - top2[0] <= 2 * (atol + RTOL * abs(top2[1])), (
            f"greedy tokens differ at step {agree} without a near tie: {out.token_ids} vs {expected_new}")
    # Logits are comparable while both runs have fed the same tokens.
    upto = len(prompt) + agree
    np.testing.assert_allclose(out.logits[:upto], hf_logits[:upto], atol=atol, rtol=RTOL)
    assert agree >= 8, f"greedy agreed for only {agree} of 16 steps"


def _agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_chunked_prefill_matches_single_chunk(tiny_model_dir):
    """A prompt split over many steps by a small token budget gives the same logits."""
    d = tiny_model_dir("llama_gqa_hd128")
    prompt = prompt_for(7, n=57)
    gen = GenerationConfig(max_new_tokens=4, ignore_eos=True, return_logits=True)
    with Engine(d, engine_config()) as eng:
        whole = eng.generate(prompt, gen)
    with Engine(d, engine_config(max_num_batched_tokens=5)) as eng:
        chunked = eng.generate(prompt, gen)
    assert chunked.token_ids == whole.token_ids
    np.testing.assert_allclose(chunked.logits, whole.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints(tiny_model_dir, tmp_path, dtype):
    """fp16/bf16 weights are kept in their precision and widened exactly: the engine
    matches transformers run in fp32 on the same (rounded) weights."""
    from tiny_models import write_text_model

    d = write_text_model(tmp_path / "m", "llama_mha_hd64", seed=3, dtype=dtype)
    hf = load_hf(d)
    prompt = prompt_for(3)
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0].numpy()
    with Engine(d, engine_config()) as eng:
        out = eng.generate(prompt, GenerationConfig(max_new_tokens=1, return_logits=True))
    np.testing.assert_allclose(out.logits, ref, atol=ATOL * np.abs(ref).max(), rtol=RTOL)


def test_sharded_checkpoint(tiny_model_dir, tmp_path):
    """A checkpoint split over several safetensors files with an index loads the same."""
    from transformers import AutoModelForCausalLM

    src = tiny_model_dir("llama_mqa")
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    prompt = prompt_for(11)
    gen = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    with Engine(src, engine_config()) as a, Engine(tmp_path / "sharded", engine_config()) as b:
        assert a.generate(prompt, gen).token_ids == b.generate(prompt, gen).token_ids

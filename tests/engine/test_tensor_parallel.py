"""Tensor parallelism on the CPU: tp ranks run as threads, each on its shard of
the model (heads, KV heads, FFN columns, a vocabulary slice of the lm_head),
summing their row-parallel outputs through a host all-reduce. The combined
result must equal the unsplit model's."""
from __future__ import annotations

import numpy as np
import pytest

from vlmserve import Engine, EngineConfig, GenerationConfig
from vlmserve.awq_checkpoint import write_awq_checkpoint
from vlmserve.awq_format import quantize_rtn
from vlmserve.errors import InvalidArgumentError

# fp32 on both sides; tp sums each row-parallel output as world partial sums.
RTOL = 1e-4

# Families whose heads and KV heads split over 2 ranks (MQA ones cannot: see the bad-input test).
SPLITTABLE = ["llama_mha_hd64", "llama_gqa_hd128", "llama_tied", "mistral_sliding", "qwen2_bias_tied"]


def config(tp: int, **kw) -> EngineConfig:
    base = dict(device="cpu", num_kv_blocks=64, block_size=16, max_batch_size=8, tp=tp)
    base.update(kw)
    return EngineConfig(**base)


def run(model_dir, tp: int, prompts: list[list[int]], n: int = 12, **kw):
    gen = GenerationConfig(max_new_tokens=n, ignore_eos=True, return_logits=True)
    with Engine(model_dir, config(tp, **kw)) as eng:
        streams = [eng.add_request(p, gen) for p in prompts]
        outs = [s.wait(timeout=300) for s in streams]
        stats = eng.stats()
    return outs, stats


def prompts_for(seed: int, vocab: int = 320) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in (9, 23, 40)]


def assert_same_generation(split, whole, rtol: float = RTOL):
    for a, b in zip(split, whole):
        assert a.token_ids == b.token_ids, f"tp tokens {a.token_ids} != unsplit {b.token_ids}"
        scale = np.abs(b.logits).max()
        np.testing.assert_allclose(a.logits, b.logits, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("family", SPLITTABLE)
def test_two_ranks_equal_the_unsplit_model(tiny_model_dir, family):
    d = tiny_model_dir(family)
    prompts = prompts_for(len(family))
    whole, whole_stats = run(d, 1, prompts)
    split, split_stats = run(d, 2, prompts)
    assert_same_generation(split, whole)
    # Each rank stores its KV heads of every block: together, the unsplit cache.
    assert split_stats.kv_cache_bytes == whole_stats.kv_cache_bytes


def test_four_ranks_and_an_uneven_vocabulary_slice(tiny_model_dir):
    # 4 heads, 4 KV heads, FFN 256 over 4 ranks; vocab 330 splits 82/83/82/83, off the 32-row panels.
    d = tiny_model_dir("llama_mha_hd64", vocab_size=330)
    prompts = prompts_for(4, vocab=330)
    whole, _ = run(d, 1, prompts)
    split, _ = run(d, 4, prompts)
    assert_same_generation(split, whole)


@pytest.mark.parametrize("group", [64, 128])
def test_awq_groups_split_whole(tiny_model_dir, tmp_path, group):
    src = tiny_model_dir("llama_gqa_hd128", intermediate_size=512)
    d = write_awq_checkpoint(src, tmp_path / f"awq{group}", group, lambda key, w: quantize_rtn(w, group))
    prompts = prompts_for(group)
    whole, _ = run(d, 1, prompts)
    split, _ = run(d, 2, prompts)
    assert_same_generation(split, whole)


def test_quantized_kv_cache_splits_by_head(tiny_model_dir):
    d = tiny_model_dir("llama_gqa_hd128")
    prompts = prompts_for(8)
    # Quantization is per token and KV head, so each rank quantizes the rows the unsplit cache does;
    # the residual stream differs from the unsplit one by fp32 summation order (~1e-7), which can move
    # a value across a code boundary: the tolerance is a few codes' worth (int8 step 1/255, int4 1/15).
    for kv, rtol in (("int8", 5e-3), ("int4", 5e-2)):
        whole, _ = run(d, 1, prompts, kv_cache_dtype=kv)
        split, _ = run(d, 2, prompts, kv_cache_dtype=kv)
        assert_same_generation(split, whole, rtol)


def test_sampling_and_chunked_prefill_under_tp(tiny_model_dir):
    d = tiny_model_dir("llama_gqa_hd128")
    prompt = prompts_for(3)[2]
    gen = GenerationConfig(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    outs = []
    for tp in (1, 2):
        # A 7-token step budget forces the 40-token prompt through several chunks.
        with Engine(d, config(tp, max_num_batched_tokens=7)) as eng:
            outs.append(eng.generate(prompt, gen).token_ids)
    assert outs[0] == outs[1]


def test_unsplittable_shapes_are_refused_clearly(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidArgumentError, match="num_kv_heads .* not divisible by tp=2"):
        Engine(tiny_model_dir("llama_mqa"), config(2))
    with pytest.raises(InvalidArgumentError, match="num_heads .* not divisible by tp=3"):
        Engine(tiny_model_dir("llama_gqa_hd128"), config(3))
    # FFN 192 over 2 ranks leaves 96 columns each: not whole groups of 64.
    src = tiny_model_dir("llama_gqa_hd128", intermediate_size=192)
    d = write_awq_checkpoint(src, tmp_path / "awq", 64, lambda key, w: quantize_rtn(w, 64))
    with pytest.raises(InvalidArgumentError, match="multiple of the AWQ group size 64"):
        Engine(d, config(2))
    for bad in (0, 9, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="tp must be an integer in"):
            EngineConfig(tp=bad)


def test_cli_takes_tp(tiny_model_dir):
    import argparse

    from vlmserve.cli.engine_args import add_engine_args, engine_config_from_args
    from vlmserve.cli.serve import add_engine_flags, engine_config_from_flags

    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert engine_config_from_args(p.parse_args(["--tp", "2"])).tp == 2
    p = argparse.ArgumentParser()
    add_engine_flags(p)
    assert engine_config_from_flags(p.parse_args(["--tp", "2"])).tp == 2


def test_ranks_sharing_the_host_check_their_whole_cache_against_it(tiny_model_dir):
    # A cache of 1.5x the available memory: each of 2 ranks' shares (0.75x) fits alone, the whole does not.
    from pathlib import Path

    from vlmserve.errors import OutOfMemoryError

    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("needs /proc/meminfo (Linux) to size a cache larger than the available memory")
    available = next(int(line.split()[1]) * 1024 for line in meminfo.read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    d = tiny_model_dir("llama_mha_hd64")
    with Engine(d, config(2)) as eng:
        per_block = eng.stats().kv_cache_bytes // 64
    blocks = int(1.5 * available) // per_block
    with pytest.raises(OutOfMemoryError, match=rf"a KV cache of {blocks} blocks of 16 tokens needs \d+ MiB of host"):
        Engine(d, config(2, num_kv_blocks=blocks))

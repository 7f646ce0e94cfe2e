"""Tensor parallelism over two GPUs (NCCL all-reduce): tp=2 against tp=1 on the
same GPUs, fp16 and w4a16 weights, fp16 and int8 KV.

Both runs keep fp16 activations; with tp=2 a row-parallel output is the sum of
two fp16-rounded partials instead of one rounding of the whole sum, so logits
differ by a few fp16 roundings. Greedy tokens must be identical except at a
step where the tp=1 run itself saw a near tie (two best logits closer than
twice the tolerance); after that the runs feed different tokens."""
from __future__ import annotations

import numpy as np
import pytest

from greedy_compare import assert_same_greedy as compare_greedy
from vlmserve import Engine, EngineConfig, GenerationConfig
from vlmserve.awq_checkpoint import write_awq_checkpoint
from vlmserve.awq_format import quantize_rtn
from vlmserve.errors import UnsupportedError


def _gpus() -> int:
    from vlmserve import _native

    try:
        return _native.lib().vlm_cuda_device_count()
    except Exception:
        return 0


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_gpus() < 2, reason="tensor parallelism needs two CUDA GPUs: fewer are visible")]

TOL = {"auto": 1e-2, "int8": 1.5e-2}
SPLITTABLE = ["llama_mha_hd64", "llama_gqa_hd128", "llama_tied", "mistral_sliding", "qwen2_bias_tied"]


def run(model, tp: int, prompt, steps: int = 16, **kw):
    cfg = EngineConfig(**dict(dict(device="cuda", num_kv_blocks=64, block_size=16, max_batch_size=8, tp=tp), **kw))
    with Engine(model, cfg) as eng:
        return eng.generate(prompt, GenerationConfig(max_new_tokens=steps, ignore_eos=True, return_logits=True))


def assert_same_greedy(ref, got, prompt_len: int, rel_tol: float, min_steps: int) -> None:
    compare_greedy(ref, got, prompt_len, rel_tol, min_steps, ("tp1", "tp2"))


def prompt_for(seed: int, n: int = 23, vocab: int = 320) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, size=n).tolist()


@pytest.mark.parametrize("family", SPLITTABLE)
def test_two_gpus_equal_one(tiny_model_dir, family):
    d = tiny_model_dir(family)
    prompt = prompt_for(len(family))
    assert_same_greedy(run(d, 1, prompt), run(d, 2, prompt), len(prompt), TOL["auto"], 8)


@pytest.mark.parametrize("group", [64, 128])
def test_awq_int8_kv_two_gpus_equal_one(tiny_model_dir, tmp_path, group):
    # FFN 512 -> 256 per rank, attention 512 -> 256: the tensor-core w4a16 path on every shard.
    src = tiny_model_dir("llama_gqa_hd128", intermediate_size=512)
    d = write_awq_checkpoint(src, tmp_path / f"awq{group}", group, lambda key, w: quantize_rtn(w, group))
    prompt = prompt_for(group, n=40)
    assert_same_greedy(run(d, 1, prompt, kv_cache_dtype="int8"), run(d, 2, prompt, kv_cache_dtype="int8"),
                       len(prompt), TOL["int8"], 0)


@pytest.mark.parametrize("weights", ["fp16", "w4a16"])
def test_wide_model_two_gpus_equal_one(tiny_model_dir, tmp_path, weights):
    """2B-wide layers (hidden 2048, 16 heads, 8 KV heads, FFN 5632 -> 2816 per rank: N % 256 != 0 on the
    w4a16 shards), 2 layers, int8 KV, a 32-step greedy run."""
    src = tiny_model_dir("llama_gqa_hd128", hidden_size=2048, num_attention_heads=16, num_key_value_heads=8,
                         intermediate_size=5632, vocab_size=4096)
    d = src if weights == "fp16" else write_awq_checkpoint(src, tmp_path / "awq", 128,
                                                           lambda key, w: quantize_rtn(w, 128))
    prompt = prompt_for(11, n=100, vocab=4096)
    assert_same_greedy(run(d, 1, prompt, 32, kv_cache_dtype="int8"), run(d, 2, prompt, 32, kv_cache_dtype="int8"),
                       len(prompt), TOL["int8"], 8)


def test_more_ranks_than_gpus_is_refused(tiny_model_dir):
    n = _gpus()
    if n >= 4:
        pytest.skip(f"{n} GPUs are visible: tp=4 would not be refused")
    with pytest.raises(UnsupportedError, match=f"needs 4 GPUs, {n} visible"):
        Engine(tiny_model_dir("llama_mha_hd64"), EngineConfig(device="cuda", num_kv_blocks=16, tp=4))

"""Sampling, stops and logprobs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sampling_support import assert_filters_restrict_the_support
from tiny_models import load_hf
from vlmserve import Engine, EngineConfig, GenerationConfig

PROMPT = np.random.default_rng(3).integers(3, 320, size=17).tolist()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama_mha_hd64")


@pytest.fixture(scope="module")
def eng(model):
    with Engine(model, EngineConfig(device="cpu", num_kv_blocks=64, block_size=16, max_batch_size=8)) as e:
        yield e


def test_same_seed_same_output_even_when_batched(eng):
    gen = GenerationConfig(max_new_tokens=24, temperature=1.3, top_p=0.95, seed=1234, ignore_eos=True)
    a = eng.generate(PROMPT, gen).token_ids
    streams = [eng.add_request(PROMPT, GenerationConfig(max_new_tokens=24, temperature=1.3, top_p=0.95,
                                                        seed=s, ignore_eos=True)) for s in (1234, 99, 1234)]
    outs = [s.wait().token_ids for s in streams]
    assert outs[0] == a and outs[2] == a
    assert outs[1] != a  # a different seed samples differently (24 tokens at T=1.3)


def test_unseeded_requests_differ(eng):
    gen = GenerationConfig(max_new_tokens=16, temperature=1.5, ignore_eos=True)
    assert len({tuple(eng.generate(PROMPT, gen).token_ids) for _ in range(4)}) > 1


def test_top_k_one_is_greedy(eng):
    greedy = eng.generate(PROMPT, GenerationConfig(max_new_tokens=12, ignore_eos=True)).token_ids
    k1 = eng.generate(PROMPT, GenerationConfig(max_new_tokens=12, temperature=2.0, top_k=1, seed=5,
                                               ignore_eos=True)).token_ids
    assert k1 == greedy


def test_filters_restrict_the_support(eng, model):
    assert_filters_restrict_the_support(eng, model, PROMPT)


def test_repetition_penalty_matches_transformers(eng, model):
    hf = load_hf(model)
    with torch.no_grad():
        expected = hf.generate(torch.tensor([PROMPT]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                               repetition_penalty=1.8)[0, len(PROMPT):].tolist()
    out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=16, ignore_eos=True, repetition_penalty=1.8))
    assert out.token_ids == expected


def test_eos_stop_sequences_and_length(eng):
    free = eng.generate(PROMPT, GenerationConfig(max_new_tokens=20, ignore_eos=True)).token_ids
    # EOS: the first generated token declared as EOS ends the request right there.
    out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=20, eos_token_ids=[free[4]]))
    cut = free.index(free[4]) + 1
    assert out.token_ids == free[:cut] and out.finish_reason == "stop" and out.stop_len == 1
    assert out.content_token_ids == free[: cut - 1]
    # ignore_eos keeps going
    assert eng.generate(PROMPT, GenerationConfig(max_new_tokens=20, eos_token_ids=[free[4]],
                                                 ignore_eos=True)).token_ids == free
    # a stop sequence of two tokens
    seq = free[6:8]
    out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=20, eos_token_ids=[], stop_token_ids=[seq]))
    assert out.finish_reason == "stop" and out.stop_len == 2 and out.token_ids[-2:] == seq
    # length
    out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=5, eos_token_ids=[]))
    assert out.finish_reason == "length" and len(out.token_ids) == 5


def test_max_model_len_ends_generation(model):
    with Engine(model, EngineConfig(device="cpu", num_kv_blocks=16, block_size=16, max_model_len=24)) as eng:
        out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=100, ignore_eos=True))
    assert out.finish_reason == "length" and len(PROMPT) + len(out.token_ids) == 24


def test_logprobs_match_log_softmax(eng, model):
    hf = load_hf(model)
    out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=6, ignore_eos=True, logprobs=3, prompt_logprobs=True))
    seq = torch.tensor([PROMPT + out.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(hf(seq).logits[0].double(), -1)
    expect = [lp[len(PROMPT) - 1 + i, t].item() for i, t in enumerate(out.token_ids)]
    np.testing.assert_allclose(out.logprobs, expect, atol=1e-4)
    for i, top in enumerate(out.top_logprobs):
        best = torch.topk(lp[len(PROMPT) - 1 + i], 3)
        assert list(top) == best.indices.tolist()
        np.testing.assert_allclose(list(top.values()), best.values.numpy(), atol=1e-4)
    prompt_expect = [lp[i, PROMPT[i + 1]].item() for i in range(len(PROMPT) - 1)]
    np.testing.assert_allclose(out.prompt_logprobs, prompt_expect, atol=1e-4)


def test_streaming_yields_tokens_as_they_come(eng):
    s = eng.add_request(PROMPT, GenerationConfig(max_new_tokens=10, ignore_eos=True, logprobs=0))
    got = [t for t in s]
    assert [t.token_id for t in got] == s.result.token_ids and len(got) == 10
    assert all(t.logprob is not None and t.logprob <= 0 for t in got)
    assert s.result.prefill_s > 0 and s.result.decode_s > 0 and s.result.queue_s >= 0


def test_async_iteration(eng):
    import asyncio

    async def main():
        s = eng.add_request(PROMPT, GenerationConfig(max_new_tokens=7, ignore_eos=True), loop=asyncio.get_running_loop())
        return [t.token_id async for t in s], s.result

    toks, result = asyncio.run(main())
    assert toks == result.token_ids and len(toks) == 7

"""Overlapped steps (the default; VLM_OVERLAP_STEPS=0 turns them off): the engine launches the next step before
it takes the running one's output, its decode rows reading their tokens where the running step left them, so the
device does not wait for the host between steps. Nothing a request sees may change: the same tokens, stops,
logprobs, logits and finish reasons as steps taken one at a time, with requests joining, being preempted,
cancelled, or drawn on the host beside them; every KV block comes back; and the overlapped path is what ran (the
engine counts its steps).

The CPU runner overlaps too (its step runs at launch; its output is handed over at collect), so these run on
any machine; the GPU variant runs the same workloads on the CUDA runner, where the overlap is real."""
from __future__ import annotations

import numpy as np
import pytest

from test_batching import assert_all_blocks_free, prompts
from vlmserve import Engine, EngineConfig, GenerationConfig


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama_gqa_hd128")


def engine(model, overlap: bool, device: str = "cpu", **kw) -> Engine:
    base = dict(device=device, num_kv_blocks=64, block_size=8, max_batch_size=16)
    base.update(kw)
    mp = pytest.MonkeyPatch()  # the engine reads the setting when it is built
    mp.setenv("VLM_OVERLAP_STEPS", "1" if overlap else "0")
    try:
        return Engine(model, EngineConfig(**base))
    finally:
        mp.undo()


def summary(out):
    return dict(tokens=out.token_ids, finish=out.finish_reason, stop_len=out.stop_len,
                logprobs=np.asarray(out.logprobs), top=[sorted(t) for t in out.top_logprobs],
                prompt_logprobs=out.prompt_logprobs)


def assert_same_outputs(got: list, expected: list, atol: float) -> None:
    """Tokens, finishes and top-k token sets exactly; log-probabilities within atol."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (g["tokens"], g["finish"], g["stop_len"], g["top"]) == (e["tokens"], e["finish"], e["stop_len"], e["top"])
        np.testing.assert_allclose(g["logprobs"], e["logprobs"], atol=atol)
        if e["prompt_logprobs"] is None:
            assert g["prompt_logprobs"] is None
        else:
            np.testing.assert_allclose(g["prompt_logprobs"], e["prompt_logprobs"], atol=atol)


def mixed_workload(eng: Engine, reference: Engine | None = None) -> list:
    """Requests of every kind at once: greedy of several lengths, greedy stopped by EOS and by a stop sequence
    (chosen from the reference run's own output, so they do stop early), seeded sampling drawn on the host,
    top-k logprobs, prompt logprobs, a repetition penalty."""
    ps = prompts(10, seed=5)
    greedy = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in (1, 2, 7, 19, 33)]
    probe = eng if reference is None else reference
    base = probe.generate(ps[5], GenerationConfig(max_new_tokens=24, ignore_eos=True)).token_ids
    gens = greedy + [
        GenerationConfig(max_new_tokens=24, eos_token_ids=[base[9]]),
        GenerationConfig(max_new_tokens=24, ignore_eos=True, stop_token_ids=[[base[12], base[13]]]),
        GenerationConfig(max_new_tokens=20, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True),
        GenerationConfig(max_new_tokens=12, logprobs=3, prompt_logprobs=True, ignore_eos=True),
        GenerationConfig(max_new_tokens=15, repetition_penalty=1.3, ignore_eos=True),
    ]
    streams = [eng.add_request(ps[i if i < 5 else 5 if i < 7 else i], g) for i, g in enumerate(gens)]
    return [summary(s.wait()) for s in streams]


def test_overlapped_steps_give_the_same_outputs(model):
    with engine(model, False) as plain:
        expected = mixed_workload(plain)
        with engine(model, True) as eng:
            got = mixed_workload(eng, reference=plain)
            assert eng.stats().overlapped_steps > 0
            assert_all_blocks_free(eng)
        assert plain.stats().overlapped_steps == 0
    assert_same_outputs(got, expected, atol=1e-5)
    # The EOS and the stop sequence stopped their requests early (so the steps launched past them were dropped).
    assert expected[5]["finish"] == "stop" and len(expected[5]["tokens"]) <= 10
    assert expected[6]["finish"] == "stop" and expected[6]["stop_len"] == 2
    assert expected[8]["prompt_logprobs"] is not None and len(expected[8]["logprobs"]) == 12


def test_requests_joining_and_leaving_mid_flight(model):
    """Requests arrive while others decode and finish at different steps: each one's tokens are its tokens alone."""
    ps = prompts(12, seed=8)
    gens = [GenerationConfig(max_new_tokens=5 + 3 * i, ignore_eos=True) for i in range(12)]
    with engine(model, False) as plain:
        alone = [plain.generate(p, g).token_ids for p, g in zip(ps, gens)]
    with engine(model, True) as eng:
        first = [eng.add_request(p, g) for p, g in zip(ps[:6], gens[:6])]
        next(iter(first[-1]))  # the first six are decoding
        later = [eng.add_request(p, g) for p, g in zip(ps[6:], gens[6:])]
        assert [s.wait().token_ids for s in first + later] == alone
        assert eng.stats().overlapped_steps > 0
        assert_all_blocks_free(eng)


def test_preemption_under_overlap_keeps_outputs(model):
    """Too few blocks for everyone: a step planned while another runs never preempts (a preempted request could
    have its next token still on the device); the engine then waits and plans with preemption, as without it."""
    ps = prompts(8, seed=3, lo=20, hi=30)
    gen = GenerationConfig(max_new_tokens=30, ignore_eos=True)
    with engine(model, False) as plain:
        alone = [plain.generate(p, gen).token_ids for p in ps]
    with engine(model, True, num_kv_blocks=24) as eng:
        outs = [s.wait() for s in [eng.add_request(p, gen) for p in ps]]
        assert [o.token_ids for o in outs] == alone
        assert eng.stats().preemptions > 0
        assert eng.stats().overlapped_steps > 0
        assert_all_blocks_free(eng)


def test_cancelling_while_a_step_runs(model):
    """A request cancelled while a launched step holds it ends as cancelled, sends nothing after that, and the
    others' tokens are unchanged."""
    ps = prompts(6, seed=13)
    gen = GenerationConfig(max_new_tokens=40, ignore_eos=True)
    with engine(model, False) as plain:
        alone = [plain.generate(p, gen).token_ids for p in ps]
    with engine(model, True) as eng:
        streams = [eng.add_request(p, gen) for p in ps]
        seen = []
        for i, tok in enumerate(streams[2]):
            seen.append(tok.token_id)
            if i == 4:
                streams[2].cancel()
        victim = streams[2].wait()
        assert victim.finish_reason == "cancelled"
        assert victim.token_ids == alone[2][: len(victim.token_ids)] and seen == victim.token_ids
        assert [s.wait().token_ids for i, s in enumerate(streams) if i != 2] == alone[:2] + alone[3:]
        assert_all_blocks_free(eng)


def test_requests_drawn_on_the_host_keep_one_token_a_step(model):
    """A request whose token the host draws from its logits cannot be planned before that token exists: while one
    runs, steps are planned one at a time, so it (and everyone beside it) still gets a token every step."""
    ps = prompts(2, seed=17)
    sampled = GenerationConfig(max_new_tokens=20, temperature=0.8, seed=5, ignore_eos=True)
    greedy = GenerationConfig(max_new_tokens=20, ignore_eos=True)
    with engine(model, False) as plain:
        expected = [plain.generate(ps[0], sampled).token_ids, plain.generate(ps[1], greedy).token_ids]
    with engine(model, True) as eng:
        before = eng.stats().steps
        streams = [eng.add_request(ps[0], sampled), eng.add_request(ps[1], greedy)]
        assert [s.wait().token_ids for s in streams] == expected
        assert eng.stats().steps - before <= 21  # 20 tokens each, both in every step (one more if they start apart)


def test_the_context_limit_is_kept_under_overlap(model):
    """A request that reaches max_model_len finishes there, with the tokens it has without overlap (while its
    last token is still on the device, the next step leaves it out)."""
    p = prompts(1, seed=21, lo=20, hi=21)[0]
    gen = GenerationConfig(max_new_tokens=100, ignore_eos=True)
    with engine(model, False, max_model_len=48) as plain:
        expected = plain.generate(p, gen)
    with engine(model, True, max_model_len=48) as eng:
        got = eng.generate(p, gen)
        assert_all_blocks_free(eng)
    assert expected.finish_reason == got.finish_reason == "length"
    assert got.token_ids == expected.token_ids and len(got.token_ids) == 48 - len(p)


@pytest.mark.gpu
def test_overlapped_steps_on_the_gpu(model):
    """The CUDA runner: launch() queues the step and returns, the next step's embedding reads the tokens the
    running step chose on the device. Same outputs as steps one at a time on the same GPU, for the mixed
    workload and for eight greedy requests decoding together. (Preemption is checked on the CPU: on the GPU a
    preempted request's recomputed prefix need not round as its decoded one did, overlap or not.)"""
    ps = prompts(8, seed=3, lo=20, hi=30)
    gen = GenerationConfig(max_new_tokens=30, ignore_eos=True)
    with engine(model, False, device="cuda") as plain:
        expected = mixed_workload(plain)
        together = [s.wait().token_ids for s in [plain.add_request(p, gen) for p in ps]]
        with engine(model, True, device="cuda") as eng:
            got = mixed_workload(eng, reference=plain)
            outs = [s.wait().token_ids for s in [eng.add_request(p, gen) for p in ps]]
            assert eng.stats().overlapped_steps > 0
            assert_all_blocks_free(eng)
    # Log-probabilities within fp16 logits' rounding (rows may sit in other batches: other GEMM plans).
    assert_same_outputs(got, expected, atol=2e-3)
    assert outs == together

"""Continuous batching: requests join a running batch between steps, leave it
when cancelled, are preempted when blocks run out, and none of that changes a
request's greedy output. Afterwards every KV block is free."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vlmserve import Engine, EngineConfig, GenerationConfig


def prompts(n: int, seed: int = 0, lo: int = 5, hi: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 320, size=int(rng.integers(lo, hi))).tolist() for _ in range(n)]


def wait_until(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for the engine"
        time.sleep(0.001)


def assert_all_blocks_free(eng: Engine):
    wait_until(lambda: eng.stats().running_requests == 0 and eng.stats().waiting_requests == 0)
    s = eng.stats()
    assert s.free_blocks == s.total_blocks


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama_gqa_hd128")


def cfg(**kw):
    base = dict(device="cpu", num_kv_blocks=64, block_size=8, max_batch_size=16)
    base.update(kw)
    return EngineConfig(**base)


def test_joining_mid_flight_and_cancellations_do_not_change_output(model):
    target_prompt = prompts(1, seed=1)[0]
    gen = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    with Engine(model, cfg()) as eng:
        alone = eng.generate(target_prompt, gen).token_ids

    with Engine(model, cfg()) as eng:
        # Others start first; the target joins once they are decoding.
        early = [eng.add_request(p, GenerationConfig(max_new_tokens=40, ignore_eos=True)) for p in prompts(3, 2)]
        first_tokens = [next(iter(s)) for s in early]
        assert len(first_tokens) == 3
        target = eng.add_request(target_prompt, gen)
        seen = []
        late = []
        for i, tok in enumerate(target):
            seen.append(tok.token_id)
            if i == 3:
                early[0].cancel()  # cancelled while the target decodes
                late = [eng.add_request(p, GenerationConfig(max_new_tokens=30, ignore_eos=True))
                        for p in prompts(3, 3)]
            if i == 8:
                late[1].cancel()
        assert seen == alone
        assert target.result.token_ids == alone
        results = [s.wait() for s in early + late]
        assert results[0].finish_reason == "cancelled" and results[4].finish_reason == "cancelled"
        assert all(r.finish_reason == "length" for i, r in enumerate(results) if i not in (0, 4))
        assert_all_blocks_free(eng)


def test_batched_outputs_equal_solo_outputs(model):
    ps = prompts(12, seed=4)
    gen = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    with Engine(model, cfg()) as eng:
        solo = [eng.generate(p, gen).token_ids for p in ps]
    with Engine(model, cfg()) as eng:
        streams = [eng.add_request(p, gen) for p in ps]
        together = [s.wait().token_ids for s in streams]
        assert eng.stats().steps < sum(len(t) for t in together)  # they really shared steps
        assert_all_blocks_free(eng)
    assert together == solo


def test_preemption_when_blocks_run_out_keeps_outputs(model):
    """A cache too small for everyone at once: requests are preempted and recomputed,
    and still produce exactly their solo outputs."""
    ps = prompts(6, seed=5, lo=20, hi=30)
    gen = GenerationConfig(max_new_tokens=40, ignore_eos=True)
    with Engine(model, cfg()) as eng:
        solo = [eng.generate(p, gen).token_ids for p in ps]
    with Engine(model, cfg(num_kv_blocks=20, block_size=8)) as eng:  # 160 slots; 6 x ~65 needed
        streams = [eng.add_request(p, gen) for p in ps]
        results = [s.wait() for s in streams]
        assert eng.stats().preemptions > 0
        assert sum(r.num_preemptions for r in results) > 0
        assert_all_blocks_free(eng)
    assert [r.token_ids for r in results] == solo


def test_max_batch_size_queues_the_rest(model):
    gen = GenerationConfig(max_new_tokens=20, ignore_eos=True)
    with Engine(model, cfg(max_batch_size=2)) as eng:
        streams = [eng.add_request(p, gen) for p in prompts(5, seed=6)]
        wait_until(lambda: eng.stats().running_requests == 2)
        assert eng.stats().waiting_requests >= 1
        assert all(len(s.wait().token_ids) == 20 for s in streams)
        assert_all_blocks_free(eng)


def test_many_threads_cancelling_at_random(model):
    """Requests added and cancelled from several threads at random moments."""
    rng = np.random.default_rng(7)
    ps = prompts(24, seed=8)
    with Engine(model, cfg(num_kv_blocks=48)) as eng:
        outcomes = []

        def client(i):
            s = eng.add_request(ps[i], GenerationConfig(max_new_tokens=int(rng.integers(5, 30)), ignore_eos=True))
            stop_after = int(rng.integers(0, 12))
            for j, _ in enumerate(s):
                if j == stop_after and i % 2:
                    s.cancel()
            outcomes.append(s.result.finish_reason)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(outcomes) == 24 and set(outcomes) <= {"length", "cancelled"}
        assert_all_blocks_free(eng)


def test_cancel_while_waiting_and_unknown_ids(model):
    with Engine(model, cfg(max_batch_size=1)) as eng:
        a = eng.add_request(prompts(1, 9)[0], GenerationConfig(max_new_tokens=30, ignore_eos=True))
        b = eng.add_request(prompts(1, 10)[0], GenerationConfig(max_new_tokens=30, ignore_eos=True))
        assert b.cancel() is None
        assert b.wait().finish_reason == "cancelled" and b.result.token_ids == []
        assert a.wait().finish_reason == "length"
        assert eng.abort(a.request_id) is False  # already finished
        assert eng.abort(987654) is False
        assert_all_blocks_free(eng)


def test_requests_queued_together_start_in_the_same_step(model):
    """add_requests hands the scheduler every request at once: prompts that fit one step's token
    budget are prefilled in one step, and a single token each finishes them there (one request at a
    time, they could land in as many steps as the engine's timing makes)."""
    gen = GenerationConfig(max_new_tokens=1, ignore_eos=True)
    with Engine(model, cfg()) as eng:
        for _ in range(3):  # every round: the same steps, however busy the machine
            before = eng.stats().steps
            streams = eng.add_requests([(p, gen) for p in prompts(4, seed=7)])
            outs = [s.wait(timeout=60) for s in streams]
            assert [len(o.token_ids) for o in outs] == [1, 1, 1, 1]
            wait_until(lambda: eng.stats().running_requests == 0)
            assert eng.stats().steps - before == 1


def test_a_batch_with_an_invalid_request_queues_none(model):
    from vlmserve.errors import InvalidArgumentError, OutOfRangeError

    good = GenerationConfig(max_new_tokens=2, ignore_eos=True)
    with Engine(model, cfg()) as eng:
        with pytest.raises(InvalidArgumentError):  # refused in Python: an empty prompt
            eng.add_requests([([5, 6, 7], good), ([], good), ([8, 9], good)])
        with pytest.raises(OutOfRangeError, match="request 1 of 3: .*outside the vocabulary"):  # by the engine
            eng.add_requests([([5, 6, 7], good), ([8, 10**6], good), ([8, 9], good)])
        assert eng.stats().waiting_requests == 0 and eng.stats().running_requests == 0
        assert eng.stats().steps == 0  # nothing of either batch ran
        assert eng.add_requests([]) == []
        out = eng.add_requests([([5, 6, 7],), ([8, 9], good)])  # the config may be left out
        assert len(out[0].wait(timeout=60).token_ids) >= 1
        assert len(out[1].wait(timeout=60).token_ids) == 2
        assert_all_blocks_free(eng)


def test_the_prefill_hold_changes_no_output_and_leaves_nothing_behind(model):
    # Three requests decode; six more arrive one by one while they run and wait (up to 4 steps) to enter together
    # (the admission itself: native/tests/scheduler_tests.cpp). Every late output is its greedy run alone, every
    # request ends, and nothing is left in the cache.
    gen = GenerationConfig(max_new_tokens=30, ignore_eos=True)
    late_prompts = prompts(6, seed=5)
    with Engine(model, cfg()) as eng:
        alone = [eng.generate(p, gen).token_ids for p in late_prompts]
    with Engine(model, cfg(prefill_hold_steps=4)) as eng:
        early = [eng.add_request(p, GenerationConfig(max_new_tokens=200, ignore_eos=True)) for p in prompts(3, 2)]
        for s in early:
            next(iter(s))
        late = []
        for p in late_prompts:
            late.append(eng.add_request(p, gen))
            time.sleep(0.002)
        assert [s.wait(60).token_ids for s in late] == alone
        for s in early:
            s.cancel()
        assert_all_blocks_free(eng)

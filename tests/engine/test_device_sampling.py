"""Sampled requests drawn on the GPU (VLM_DEVICE_SAMPLING=1: the engine passes each sampled row's filters and
its request's next uniform number to the CUDA runner, which draws the token where the logits are, native/cuda/
draw_rows.cu): seeded requests repeat alone and batched, the filters restrict the support as on the host,
requests that need their whole row (logprobs, repetition penalty) are still drawn on the host, and the device
draw is what ran. Needs a CUDA GPU."""
from __future__ import annotations

import numpy as np
import pytest

from sampling_support import assert_filters_restrict_the_support
from vlmserve import Engine, EngineConfig, GenerationConfig

pytestmark = pytest.mark.gpu

PROMPT = np.random.default_rng(3).integers(3, 320, size=17).tolist()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("llama_mha_hd64")


def engine(model, device_draws: bool) -> Engine:
    # The CUDA runner reads the setting when it is built.
    mp = pytest.MonkeyPatch()
    mp.setenv("VLM_DEVICE_SAMPLING", "1" if device_draws else "0")
    try:
        return Engine(model, EngineConfig(device="cuda", num_kv_blocks=64, block_size=16, max_batch_size=8))
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def eng(model):
    with engine(model, True) as e:
        yield e


def test_seeded_requests_repeat_alone_and_batched(eng):
    gen = dict(max_new_tokens=24, temperature=1.3, top_p=0.95, ignore_eos=True)
    alone = eng.generate(PROMPT, GenerationConfig(seed=1234, **gen)).token_ids
    streams = [eng.add_request(PROMPT, GenerationConfig(seed=s, **gen)) for s in (1234, 99, 1234)]
    outs = [s.wait().token_ids for s in streams]
    assert outs[0] == alone and outs[2] == alone
    assert outs[1] != alone


def test_the_device_draw_is_what_ran(model, eng):
    """The host walks top-p's kept tokens in descending order, the device in vocabulary order: the same
    generator state picks other tokens, so 24 tokens from a flat distribution (temperature 3) cannot all agree."""
    gen = GenerationConfig(max_new_tokens=24, temperature=3.0, top_p=0.99, seed=7, ignore_eos=True)
    with engine(model, False) as host:
        on_host = host.generate(PROMPT, gen).token_ids
    assert eng.generate(PROMPT, gen).token_ids != on_host


def test_filters_restrict_the_support(eng, model):
    assert_filters_restrict_the_support(eng, model, PROMPT, n=80)


def test_requests_that_need_their_row_are_drawn_on_the_host(eng):
    out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=6, temperature=0.9, seed=3, logprobs=2,
                                                ignore_eos=True))
    assert len(out.logprobs) == 6 and all(lp <= 0 for lp in out.logprobs) and len(out.top_logprobs) == 6
    pen = eng.generate(PROMPT, GenerationConfig(max_new_tokens=6, temperature=0.9, seed=3, repetition_penalty=1.5,
                                                ignore_eos=True))
    assert len(pen.token_ids) == 6

"""Real weights: SmolLM2-135M-Instruct (dequantized from its Q4_1 GGUF, the
full-precision baseline), against transformers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import greedy_tokens
from vlmserve import Engine, EngineConfig, GenerationConfig
from vlmserve.perplexity import engine_perplexity, windows

# WikiText-2 test split; the first PPL_TOKENS tokens, windows of 512 with stride 512,
# keep CI on 2 cores within minutes (the full-split figure is in the benchmark docs).
PPL_TOKENS = 16384
WINDOW = STRIDE = 512


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    with Engine(smollm2_dir, EngineConfig(device="cpu", max_batch_size=8, max_model_len=1024,
                                          num_kv_blocks=128, block_size=64)) as eng:
        yield eng


def test_chat_answer_equals_transformers(tokenizer, hf_model, engine):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    out = engine.generate(ids, GenerationConfig(max_new_tokens=32))
    assert out.token_ids == ref
    text = tokenizer.decode(out.content_token_ids)
    print("engine answer:", repr(text))
    assert "Paris" in text


def test_greedy_32_tokens_ignoring_eos_equal_transformers(tokenizer, hf_model, engine):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Write a short poem about the sea."}],
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        ref = greedy_tokens(hf_model, 32, ids)
    assert engine.generate(ids, GenerationConfig(max_new_tokens=32, ignore_eos=True)).token_ids == ref


def _wikitext_tokens(tokenizer) -> list[int]:
    from importlib.resources import files

    text = (files("vlmserve") / "data" / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")
    return tokenizer(text[: PPL_TOKENS * 8])["input_ids"][:PPL_TOKENS]


def _hf_perplexity(model, tokens) -> float:
    nll, count = 0.0, 0
    for b, e, scored in windows(len(tokens), WINDOW, STRIDE):
        ids = torch.tensor([tokens[b:e]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        tgt = ids[0, 1:]
        lp = logp.gather(1, tgt[:, None])[:, 0]
        nll -= lp[-scored:].sum().item()
        count += scored
    return float(np.exp(nll / count))


def test_wikitext2_perplexity_within_one_percent(tokenizer, hf_model, engine):
    tokens = _wikitext_tokens(tokenizer)
    assert len(tokens) == PPL_TOKENS
    ours = engine_perplexity(engine, tokens, WINDOW, STRIDE)
    theirs = _hf_perplexity(hf_model, tokens)
    print(f"WikiText-2 test, first {PPL_TOKENS} tokens, window {WINDOW} stride {STRIDE}: "
          f"engine {ours.perplexity:.4f}, transformers {theirs:.4f}")
    assert ours.tokens_scored == PPL_TOKENS - 1
    assert abs(ours.perplexity / theirs - 1) < 0.01

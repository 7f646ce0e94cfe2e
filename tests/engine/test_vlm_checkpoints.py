"""The language model inside VLM checkpoints, and image-embedding spans."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import greedy_tokens, load_hf, write_text_model
from tiny_vlms import write_idefics3, write_internvl_chat, write_internvl_hf, write_llava
from vlmserve import Embeddings, Engine, EngineConfig, GenerationConfig

PROMPT = np.random.default_rng(13).integers(3, 299, size=21).tolist()
CFG = dict(device="cpu", num_kv_blocks=32, block_size=16)


def hf_vlm(directory):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.mark.parametrize("writer,family", [(write_llava, "llava"), (write_idefics3, "idefics3"),
                                           (lambda d: write_idefics3(d, smolvlm=True), "idefics3"),
                                           (write_internvl_hf, "internvl")])
def test_language_model_of_vlm_matches_transformers(tmp_path, writer, family):
    d = writer(tmp_path / "vlm")
    model = hf_vlm(d)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([PROMPT])).logits[0].numpy()
    with Engine(d, EngineConfig(**CFG)) as eng:
        assert eng.spec.family == family
        out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=1, return_logits=True))
    np.testing.assert_allclose(out.logits, ref, atol=2e-4 * np.abs(ref).max(), rtol=2e-4)


def test_internvl_chat_remote_code_layout(tmp_path):
    qwen = write_text_model(tmp_path / "qwen2", "qwen2_bias_tied", seed=4)
    d = write_internvl_chat(tmp_path / "internvl_chat", qwen)
    gen = GenerationConfig(max_new_tokens=10, ignore_eos=True, return_logits=True)
    with Engine(qwen, EngineConfig(**CFG)) as a, Engine(d, EngineConfig(**CFG)) as b:
        assert b.spec.family == "internvl"
        x, y = a.generate(PROMPT, gen), b.generate(PROMPT, gen)
    assert x.token_ids == y.token_ids
    np.testing.assert_array_equal(x.logits, y.logits)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_embedding_spans_replace_placeholder_embeddings(tiny_model_dir, dtype):
    """Rows given for positions [4, 9) and [12, 15) are used instead of those
    tokens' embeddings: the engine equals transformers run on inputs_embeds."""
    d = tiny_model_dir("llama_gqa_hd128")
    hf = load_hf(d)
    rng = np.random.default_rng(17)
    spans = [Embeddings(4, rng.normal(size=(5, 256)).astype(dtype)),
             Embeddings(12, rng.normal(size=(3, 256)).astype(dtype))]
    with torch.no_grad():
        emb = hf.model.embed_tokens(torch.tensor([PROMPT])).clone()
        for s in spans:
            emb[0, s.position:s.position + len(s.rows)] = torch.from_numpy(s.rows.astype(np.float32))
        expected = greedy_tokens(hf, 8, inputs_embeds=emb)
        ref = hf(inputs_embeds=emb).logits[0].numpy()
    with Engine(d, EngineConfig(**CFG)) as eng:
        out = eng.generate(PROMPT, GenerationConfig(max_new_tokens=8, ignore_eos=True, return_logits=True), spans)
        plain = eng.generate(PROMPT, GenerationConfig(max_new_tokens=8, ignore_eos=True))
    assert out.token_ids == expected[-8:]
    assert out.token_ids != plain.token_ids
    np.testing.assert_allclose(out.logits[: len(PROMPT)], ref, atol=2e-4 * np.abs(ref).max(), rtol=2e-4)


def test_embedding_spans_survive_chunking_and_preemption(tiny_model_dir):
    d = tiny_model_dir("llama_gqa_hd128")
    rows = np.random.default_rng(2).normal(size=(9, 256)).astype(np.float32)
    gen = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    with Engine(d, EngineConfig(**CFG)) as eng:
        whole = eng.generate(PROMPT, gen, [Embeddings(3, rows)]).token_ids
    with Engine(d, EngineConfig(**dict(CFG, max_num_batched_tokens=4))) as eng:
        chunked = eng.generate(PROMPT, gen, [Embeddings(3, rows)]).token_ids
    assert chunked == whole

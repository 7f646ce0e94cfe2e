"""Every VLM family end to end on tiny seeded-random checkpoints: the prompt is
spelled as the family's own processor spells it, and a chat streamed through
the vision and LM services equals the engine run directly on the same prompt
with the same embeddings (multiple images in one message included)."""
from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IMAGES, ServerThread
from lm_stack import LmServerThread
from vlmserve.prompt_builder import Layout, PromptBuilder
from vlmserve.services import protos

FAMILIES = ["llava", "idefics3", "internvl"]


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    from tiny_vlm_stack import write_stack

    return {f: write_stack(tmp_path_factory.mktemp(f"stack_{f}"), f) for f in FAMILIES}


def _images():
    return [Image.open(IMAGES / n).convert("RGB") for n in ("rocket.jpg", "chelsea.png")]


def _layouts_and_rows(model_dir, images):
    from vlmserve.vision.encoder import VisionEncoder

    enc = VisionEncoder(model_dir)
    enc.warmup()
    out = enc.encode(images)
    lays = [Layout(e.layout.num_tokens, e.layout.tokens_per_tile, e.layout.grid_rows, e.layout.grid_cols,
                   e.layout.has_global_tile) for e in out]
    return lays, [e.embeddings.to(torch.float16).numpy() for e in out]  # fp16, as on the wire


MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare"},
                                         {"type": "image"}, {"type": "text", "text": "please."}]}]


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_prompt_spelling_equals_the_family_processor(stacks, family):
    from transformers import AutoProcessor

    d = stacks[family]
    images = _images()
    lays, _ = _layouts_and_rows(d, images)
    built = PromptBuilder(d, family).build(MESSAGES, lays)
    proc = AutoProcessor.from_pretrained(d)
    ref = proc(text=proc.apply_chat_template(MESSAGES, add_generation_prompt=True), images=images,
               return_tensors="pt")["input_ids"][0].tolist()
    assert built.token_ids == ref


def test_internvl_prompt_spelling(stacks):
    d = stacks["internvl"]
    lays, _ = _layouts_and_rows(d, _images())
    b = PromptBuilder(d, "internvl")
    text = b.tokenizer.decode(b.build(MESSAGES, lays).token_ids)
    expect = "".join("<img>" + "<IMG_CONTEXT>" * lay.num_tokens + "</img>" for lay in lays[:1])
    assert expect + "Compare<img>" in text and text.count("<IMG_CONTEXT>") == sum(lay.num_tokens for lay in lays)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_through_both_services_equals_engine_direct(stacks, family):
    from vlmserve import Embeddings, GenerationConfig

    d = stacks[family]
    vision = ServerThread(d)
    lm = LmServerThread(d, vision.address, engine_kw={"num_kv_blocks": 32, "max_model_len": 512})
    pb, common = protos.lm(), protos.common()
    try:
        blobs = [(IMAGES / "rocket.jpg").read_bytes(), (IMAGES / "chelsea.png").read_bytes()]
        content = [pb.ContentPart(image=common.ImageInput(data=blobs[0], mime_type="image/jpeg")),
                   pb.ContentPart(text="Compare"),
                   pb.ContentPart(image=common.ImageInput(data=blobs[1], mime_type="image/png")),
                   pb.ContentPart(text="please.")]
        req = pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content=content)])
        req.params.max_tokens = 10
        req.params.ignore_eos = True
        with grpc.insecure_channel(lm.address) as ch:
            msgs = list(protos.lm_grpc().LmServiceStub(ch).Chat(req, timeout=120))
        got = [t for m in msgs for t in m.token_ids]
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
        lays, rows = _layouts_and_rows(d, images)
        core = lm.server.ready()
        built = core.builder.build(MESSAGES, lays)
        spans = [Embeddings(pos, rows[img][row:row + n]) for pos, img, row, n in built.spans]
        want = core.engine.generate(built.token_ids, GenerationConfig(max_new_tokens=10, ignore_eos=True),
                                    spans).token_ids
        assert got == want
        assert msgs[-1].usage.image_tokens == sum(lay.num_tokens for lay in lays)
        assert msgs[-1].usage.prompt_tokens == len(built.token_ids)
        # and the images matter: without them the answer differs
        plain = core.engine.generate(built.token_ids, GenerationConfig(max_new_tokens=10, ignore_eos=True)).token_ids
        assert plain != want or np.allclose(rows[0], 0)
    finally:
        lm.stop()
        vision.stop()

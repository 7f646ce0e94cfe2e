"""pipeline(): vision encoder and engine in one process, on the default model."""
from __future__ import annotations

from pathlib import Path

import pytest

from vlmserve import EngineConfig, GenerationConfig, load_image, pipeline
from vlmserve.errors import InvalidArgumentError

IMAGES = Path(__file__).parent / "data" / "images"


@pytest.fixture(scope="module")
def pipe():
    from vlmserve.default_model import default_vlm_checkpoint

    p = pipeline(default_vlm_checkpoint(), EngineConfig(device="cpu", num_kv_blocks=64, block_size=32,
                                                        max_model_len=1024),
                 gen_config=GenerationConfig(max_new_tokens=16))
    yield p
    p.close()


def test_text_prompt_gives_the_real_answer(pipe):
    r = pipe("What is the capital of France?")
    assert "Paris" in r.text and r.finish_reason == "stop" and r.input_token_len > 10


def test_image_prompt_batch_and_streaming_agree(pipe):
    img = load_image(IMAGES / "chelsea.png")
    single = pipe(("Describe this image.", img), GenerationConfig(max_new_tokens=12, ignore_eos=True))
    assert single.input_token_len > 256 and single.generate_token_len == 12  # 256 image tokens in the prompt
    batch = pipe(["What is the capital of France?", ("Describe this image.", img)],
                 GenerationConfig(max_new_tokens=12, ignore_eos=True))
    assert [r.index for r in batch] == [0, 1] and batch[1].token_ids == single.token_ids
    streamed = "".join(r.text for r in pipe.stream_infer(("Describe this image.", img),
                                                         GenerationConfig(max_new_tokens=12, ignore_eos=True)))
    assert streamed == single.text
    # two images in one prompt, and OpenAI-style messages with a data URL
    import base64

    url = "data:image/png;base64," + base64.b64encode((IMAGES / "chelsea.png").read_bytes()).decode()
    two = pipe([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "image", "image": str(IMAGES / "rocket.jpg")},
                                             {"type": "text", "text": "Compare them."}]}])
    assert two.input_token_len > 512


def test_bad_prompts(pipe):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        pipe(("look", "/no/such/image.png"))
    with pytest.raises(InvalidArgumentError):
        pipe(42)
    with pytest.raises(InvalidArgumentError, match="decode"):
        load_image("data:image/png;base64," + "aGVsbG8=")

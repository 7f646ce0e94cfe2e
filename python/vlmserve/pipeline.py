"""pipeline(): the vision encoder and the engine in one process, as LMDeploy
users know it.

    from vlmserve import pipeline, load_image
    pipe = pipeline(model_dir)
    pipe(("describe this image", load_image("photo.jpg"))).text
    pipe(["hello", ("what is in it?", img)])        # a batch: run together
    for r in pipe.stream_infer(("describe", img)):  # text deltas as they come
        print(r.text, end="")
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from vlmserve.config import EngineConfig, GenerationConfig
from vlmserve.engine import Embeddings, Engine
from vlmserve.errors import InvalidArgumentError
from vlmserve.prompt_builder import Layout, PromptBuilder
from vlmserve.text_stream import TextStreamer


@dataclass
class Response:
    text: str
    generate_token_len: int
    input_token_len: int
    finish_reason: str | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    index: int = 0


def load_image(path_or_url, max_pixels: int = 64 * 1024 * 1024):
    """A local path, a data URL or an http(s) URL -> an RGB PIL image."""
    import base64
    import urllib.request

    from PIL import Image

    if hasattr(path_or_url, "convert"):
        return path_or_url.convert("RGB")
    src = str(path_or_url)
    if src.startswith("data:"):
        try:
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
        except (IndexError, ValueError) as e:
            raise InvalidArgumentError(f"not a base64 data URL: {e}") from None
    elif src.startswith(("http://", "https://")):
        with urllib.request.urlopen(src, timeout=30) as resp:  # the caller asked for this URL explicitly
            data = resp.read()
    else:
        p = Path(src)
        if not p.is_file():
            raise InvalidArgumentError(f"image file {src} does not exist")
        data = p.read_bytes()
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise InvalidArgumentError(f"cannot decode image {src[:80]}: {e}") from None
    return img.convert("RGB")


def _as_messages(prompt) -> tuple[list[dict], list]:
    """str | (str, image) | (str, [images]) | OpenAI-style messages -> (messages, images)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], []
    if isinstance(prompt, tuple) and len(prompt) == 2 and isinstance(prompt[0], str):
        text, imgs = prompt
        imgs = list(imgs) if isinstance(imgs, (list, tuple)) else [imgs]
        images = [load_image(i) for i in imgs]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        return [{"role": "user", "content": content}], images
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        messages, images = [], []
        for m in prompt:
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") in ("image", "image_url"):
                        src = part.get("image") or (part.get("image_url") or {}).get("url")
                        images.append(load_image(src))
                        parts.append({"type": "image"})
                    else:
                        parts.append({"type": "text", "text": part.get("text", "")})
                content = parts
            messages.append({**m, "content": content})
        return messages, images
    raise InvalidArgumentError("a prompt is a string, (text, image[s]) or a list of chat messages")


class Pipeline:
    def __init__(self, model: str | Path, engine_config: EngineConfig | None = None, vision_config=None,
                 gen_config: GenerationConfig | None = None):
        self.engine = Engine(model, engine_config)
        self.family = self.engine.spec.family
        self.builder = PromptBuilder(model, self.family)
        self.gen_config = gen_config or GenerationConfig(max_new_tokens=512)
        self.vision = None
        if self.family != "causal_lm":
            from vlmserve.vision.config import VisionConfig
            from vlmserve.vision.encoder import VisionEncoder

            self.vision = VisionEncoder(model, vision_config or VisionConfig())
            self.vision.warmup()

    def _submit(self, prompt, gen: GenerationConfig):
        messages, images = _as_messages(prompt)
        if images and self.vision is None:
            raise InvalidArgumentError("this model takes no images")
        encoded = self.vision.encode(images) if images else []
        layouts = [Layout(e.layout.num_tokens, e.layout.tokens_per_tile, e.layout.grid_rows, e.layout.grid_cols,
                          e.layout.has_global_tile) for e in encoded]
        built = self.builder.build(messages, layouts)
        spans = [Embeddings(pos, encoded[img].embeddings[row:row + n].float().numpy())
                 for pos, img, row, n in built.spans]
        return self.engine.add_request(built.token_ids, gen, spans), len(built.token_ids)

    def stream_infer(self, prompts, gen_config: GenerationConfig | None = None, stop: Sequence[str] = ()
                     ) -> Iterator[Response]:
        """Yields a Response per new piece of text (its `index` says which prompt)."""
        single = not isinstance(prompts, list) or (prompts and isinstance(prompts[0], dict))
        batch = [prompts] if single else prompts
        gen = gen_config or self.gen_config
        jobs = [self._submit(p, gen) for p in batch]
        for index, (stream, n_in) in enumerate(jobs):
            streamer = TextStreamer(self.builder.tokenizer, list(stop))
            count = 0
            for tok in stream:
                count += 1
                chunk = streamer.push(tok)
                if chunk.matched_stop:
                    stream.cancel()
                    yield Response(chunk.text, count, n_in, "stop", [tok.token_id], index=index)
                    break
                if chunk.text:
                    yield Response(chunk.text, count, n_in, None, [tok.token_id], index=index)
            else:
                out = stream.wait()
                yield Response(streamer.flush(), len(out.token_ids), n_in, out.finish_reason, [], index=index)

    def __call__(self, prompts, gen_config: GenerationConfig | None = None, stop: Sequence[str] = ()):
        single = not isinstance(prompts, list) or (prompts and isinstance(prompts[0], dict))
        batch = [prompts] if single else prompts
        gen = gen_config or self.gen_config
        jobs = [self._submit(p, gen) for p in batch]  # all queued first, so the engine batches them
        results = []
        for index, (stream, n_in) in enumerate(jobs):
            out = stream.wait()
            ids = out.content_token_ids
            streamer = TextStreamer(self.builder.tokenizer, list(stop))
            text, reason = "", out.finish_reason
            for t in ids:
                from vlmserve.outputs import TokenOutput

                chunk = streamer.push(TokenOutput(t))
                text += chunk.text
                if chunk.matched_stop:
                    reason = "stop"
                    break
            else:
                text += streamer.flush()
            results.append(Response(text, len(out.token_ids), n_in, reason, out.token_ids,
                                    out.logprobs or None, index))
        return results[0] if single else results

    def close(self) -> None:
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pipeline(model: str | Path, engine_config: EngineConfig | None = None, vision_config=None,
             gen_config: GenerationConfig | None = None) -> Pipeline:
    return Pipeline(model, engine_config, vision_config, gen_config)

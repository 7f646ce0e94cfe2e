"""Text in, text out: a tokenizer and chat template (transformers) in front of
an Engine. The entry point of `vlmserve generate`."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from vlmserve.config import EngineConfig, GenerationConfig
from vlmserve.detokenizer import IncrementalDetokenizer
from vlmserve.engine import Engine
from vlmserve.errors import InvalidArgumentError


class TextGenerator:
    def __init__(self, model_path: str | Path, engine_config: EngineConfig | None = None,
                 show_progress: bool = False):
        from transformers import AutoTokenizer

        self.engine = Engine(model_path, engine_config, show_progress=show_progress)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))

    def encode(self, prompt: str, chat: bool = True) -> list[int]:
        if not isinstance(prompt, str) or not prompt:
            raise InvalidArgumentError("prompt must be a non-empty string")
        if chat and self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, return_dict=True)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

    def stream(self, prompt: str, gen: GenerationConfig | None = None, chat: bool = True) -> Iterator[str]:
        """Yields text deltas as tokens are generated."""
        stream = self.engine.add_request(self.encode(prompt, chat), gen)
        detok = IncrementalDetokenizer(self.tokenizer)
        for tok in stream:
            delta = detok.push(tok.token_id)
            if delta:
                yield delta
        self.last_output = stream.result

    def __call__(self, prompt: str, gen: GenerationConfig | None = None, chat: bool = True) -> str:
        return "".join(self.stream(prompt, gen, chat))

    def close(self) -> None:
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

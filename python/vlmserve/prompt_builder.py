"""Chat messages with images -> prompt token ids and the positions their image
embeddings fill, spelled the way each family's own processor spells them.

The model's chat template renders every image part as the family's
placeholder; each placeholder is then expanded to the token sequence the
family expects for that image's layout (from the vision service), and the
runs of image tokens become the embedding spans the engine writes over."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmserve.errors import InternalError, InvalidArgumentError, UnsupportedError


@dataclass(frozen=True)
class Layout:
    """What the LM needs of an encoded image (mirrors vlm.v1.ImageLayout)."""

    num_tokens: int
    tokens_per_tile: int
    grid_rows: int = 0
    grid_cols: int = 0
    has_global_tile: bool = False


@dataclass
class BuiltPrompt:
    token_ids: list[int]
    # (first prompt position, image index, first row of that image's embeddings, rows)
    spans: list[tuple[int, int, int, int]]
    image_tokens: int


class PromptBuilder:
    def __init__(self, model_dir: str | Path, family: str, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        self.family = family
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        self.processor = None
        if family != "causal_lm":
            from transformers import AutoProcessor

            try:
                self.processor = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
            except (OSError, ValueError, TypeError):
                self.processor = None
        self.chat_template = (getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template)
        if not self.chat_template:
            raise UnsupportedError(f"{model_dir} has no chat template")
        self.placeholder = self._placeholder()
        self.image_token = self._image_token()
        self.image_token_id = (self.tokenizer.convert_tokens_to_ids(self.image_token)
                               if self.image_token else None)

    # -- family spelling ----------------------------------------------------------------------------
    def _placeholder(self) -> str | None:
        """What the chat template writes for one image part."""
        if self.family == "causal_lm":
            return None
        if self.family == "internvl":
            return getattr(self.processor, "image_token", None) or "<IMG_CONTEXT>"
        return getattr(self.processor, "image_token", None) or "<image>"

    def _image_token(self) -> str | None:
        return self._placeholder()

    def expansion(self, layout: Layout) -> str:
        """The text an image's placeholder becomes."""
        tok = self.image_token
        if self.family == "llava":
            return tok * layout.num_tokens
        if self.family == "internvl":
            return "<img>" + tok * layout.num_tokens + "</img>"
        if self.family == "idefics3":
            fake, glob, n = "<fake_token_around_image>", "<global-img>", layout.tokens_per_tile
            if layout.grid_rows == 0 or layout.grid_cols == 0:
                return fake + glob + tok * n + fake
            text = ""
            for r in range(layout.grid_rows):
                for c in range(layout.grid_cols):
                    text += f"{fake}<row_{r + 1}_col_{c + 1}>" + tok * n
                text += "\n"
            return text + f"\n{fake}{glob}" + tok * n + fake
        raise UnsupportedError(f"family {self.family!r} takes no images")

    # -- building -----------------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as e:  # jinja errors on messages the template cannot render
            raise InvalidArgumentError(f"the model's chat template rejected the messages: {e}") from None

    def build(self, messages: list[dict], layouts: list[Layout], add_generation_prompt: bool = True) -> BuiltPrompt:
        """messages: OpenAI-style dicts whose content is a string or a list of
        {"type": "text", "text": ...} / {"type": "image"} parts; layouts: one per image part, in order."""
        text = self.render(messages, add_generation_prompt)
        if layouts:
            if self.placeholder is None:
                raise InvalidArgumentError("this model takes no images")
            pieces = text.split(self.placeholder)
            if len(pieces) - 1 != len(layouts):
                raise InternalError(f"the chat template wrote {len(pieces) - 1} image placeholders for "
                                    f"{len(layouts)} images")
            text = pieces[0] + "".join(self.expansion(lay) + after for lay, after in zip(layouts, pieces[1:]))
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return BuiltPrompt(ids, *self._spans(ids, layouts))

    def _spans(self, ids: list[int], layouts: list[Layout]) -> tuple[list, int]:
        if not layouts:
            return [], 0
        arr = np.asarray(ids)
        positions = np.flatnonzero(arr == self.image_token_id)
        need = sum(lay.num_tokens for lay in layouts)
        if len(positions) != need:
            raise InternalError(f"{len(positions)} image tokens in the prompt, {need} embedding rows")
        spans, start = [], 0
        for image, lay in enumerate(layouts):
            pos = positions[start:start + lay.num_tokens]
            start += lay.num_tokens
            # maximal runs of consecutive positions
            breaks = np.flatnonzero(np.diff(pos) != 1) + 1
            row = 0
            for run in np.split(pos, breaks):
                spans.append((int(run[0]), image, row, len(run)))
                row += len(run)
        return spans, need

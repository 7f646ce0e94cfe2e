"""Generated tokens -> text deltas, with stop strings.

Text that could still become a stop string is held back until it cannot;
when a stop string appears, the text before it is released, the rest is
dropped and the caller cancels the engine request."""
from __future__ import annotations

from dataclasses import dataclass, field

from vlmserve.detokenizer import IncrementalDetokenizer
from vlmserve.outputs import TokenOutput


@dataclass
class TextChunk:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenOutput] = field(default_factory=list)
    matched_stop: str | None = None  # set when a stop string ended generation


class TextStreamer:
    def __init__(self, tokenizer, stop: list[str] | None = None, skip_special_tokens: bool = True):
        self.detok = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        self.stop = [s for s in (stop or []) if s]
        self.pending = ""     # decoded but not yet released
        self.released = ""    # everything released so far
        self.stopped = False

    def push(self, token: TokenOutput) -> TextChunk:
        """One generated token; the chunk carries whatever text became safe to release."""
        chunk = TextChunk(token_ids=[token.token_id], logprobs=[token])
        if self.stopped:
            return chunk
        self.pending += self.detok.push(token.token_id)
        chunk.text, chunk.matched_stop = self._release(final=False)
        return chunk

    def push_many(self, tokens: list[TokenOutput]) -> TextChunk:
        """Several tokens at once, decoded together. Only without stop strings: with them, each token must be
        pushed alone so that the tokens after a match can be dropped."""
        if self.stop:
            raise ValueError("push_many() is for streams without stop strings; push() each token")
        chunk = TextChunk(token_ids=[t.token_id for t in tokens], logprobs=list(tokens))
        self.pending += self.detok.extend(chunk.token_ids)
        chunk.text, _ = self._release(final=False)
        return chunk

    def flush(self) -> str:
        """At the end: releases the held-back text (no stop string can complete now)."""
        if self.stopped:
            return ""
        text, _ = self._release(final=True)
        return text

    def _release(self, final: bool) -> tuple[str, str | None]:
        hit = None
        for s in self.stop:
            i = self.pending.find(s)
            if i >= 0 and (hit is None or i < hit[0]):
                hit = (i, s)
        if hit is not None:
            out = self.pending[: hit[0]]
            self.released += out
            self.pending = ""
            self.stopped = True
            return out, hit[1]
        keep = 0 if final else self._holdback()
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        self.released += out
        return out, None

    def _holdback(self) -> int:
        """Length of the longest suffix of pending text that starts some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if s.startswith(self.pending[-n:]):
                    best = n
                    break
        return best

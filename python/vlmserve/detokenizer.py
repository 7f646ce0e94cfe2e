"""Incremental detokenization: text deltas for a growing list of token ids,
never splitting a multi-byte character across two deltas.

Each push decodes a short window, not the whole output: the tokens not yet
turned into text plus the few before them (some tokenizers decode a token
differently at the start of a text, e.g. SentencePiece drops a leading space,
so the window keeps left context). The delta is what the window's text adds to
the text of its context alone. Re-decoding everything made each token cost
O(length) and, at thousands of tokens per second, held the serving process's
GIL most of the time."""
from __future__ import annotations

# Tokens of left context kept before the undecoded ones.
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: left context
        self._read = 0    # first token whose text is not yet released

    def push(self, token_id: int) -> str:
        """Adds one token; returns the newly completed text (possibly "")."""
        return self.extend((token_id,))

    def extend(self, token_ids) -> str:
        """Adds several tokens with the two decodes of one push; returns the newly completed text (possibly "")."""
        self.token_ids.extend(token_ids)
        ids = self.token_ids
        context = self._decode(ids[self._prefix:self._read])
        window = self._decode(ids[self._prefix:])
        if window.endswith("\ufffd") or len(window) <= len(context):
            # an incomplete UTF-8 sequence, or nothing new yet (a token that decodes to nothing): wait
            return ""
        delta = window[len(context):]
        self._read = len(ids)
        self._prefix = max(self._read - _CONTEXT_TOKENS, 0)
        self.text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""

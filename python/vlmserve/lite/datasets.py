"""Text that ships with vlmserve (WikiText-2, see data/SOURCES.md for its
licence) and local text files, read offline.

A source is a built-in name or a path:
  wikitext2      the WikiText-2 validation split for calibration, the test
                 split (wiki.test.raw) for evaluation: the two are disjoint
  FILE.txt       the whole file is one document
  FILE.jsonl     one JSON value a line: a string, {"text": ...} or
                 {"input_ids": [...]} (already tokenized)"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from vlmserve.errors import InvalidArgumentError, NotFoundError

BUILTIN = {
    "wikitext2": {"calibration": "wiki.valid.tokens", "evaluation": "wiki.test.raw"},
}


@dataclass
class TextSource:
    name: str
    documents: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)  # pre-tokenized documents

    @property
    def empty(self) -> bool:
        return not any(d.strip() for d in self.documents) and not any(self.token_ids)


def builtin_path(name: str, split: str) -> Path:
    path = files("vlmserve") / "data" / "wikitext-2" / BUILTIN[name][split]
    return Path(str(path))


def load_text(source: str, split: str) -> TextSource:
    """split: "calibration" or "evaluation" (which built-in file a name means)."""
    if source in BUILTIN:
        path = builtin_path(source, split)
        if not path.is_file():
            raise NotFoundError(f"the built-in dataset {source!r} is missing from this install ({path})")
        return TextSource(source, [path.read_text(encoding="utf-8")])
    path = Path(source)
    if not path.exists():
        raise NotFoundError(f"dataset {source!r} is neither a built-in name ({', '.join(BUILTIN)}) "
                            f"nor an existing file")
    if not path.is_file():
        raise InvalidArgumentError(f"dataset {source} is not a file")
    if path.suffix == ".jsonl":
        return _jsonl(path)
    if path.suffix not in (".txt", ".raw", ".tokens"):
        raise InvalidArgumentError(f"dataset {path}: expected a .txt or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgumentError(f"dataset {path} is not UTF-8 text: {e}") from None
    return TextSource(str(path), [text])


def _jsonl(path: Path) -> TextSource:
    out = TextSource(str(path))
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise InvalidArgumentError(f"{path}:{n} is not valid JSON: {e}") from None
            if isinstance(item, dict) and "input_ids" in item:
                ids = item["input_ids"]
                if not (isinstance(ids, list) and all(isinstance(t, int) and t >= 0 for t in ids)):
                    raise InvalidArgumentError(f"{path}:{n}: input_ids must be a list of non-negative integers")
                out.token_ids.append(ids)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                out.documents.append(item["text"])
            elif isinstance(item, str):
                out.documents.append(item)
            else:
                raise InvalidArgumentError(f'{path}:{n}: expected a string, {{"text": ...}} or {{"input_ids": [...]}}')
    return out


def tokenize(source: TextSource, tokenizer, add_special_tokens: bool = False) -> list[int]:
    """All documents' tokens, concatenated in order (pre-tokenized ones as given)."""
    ids: list[int] = []
    texts = [d for d in source.documents if d.strip()]
    if texts:
        if tokenizer is None:
            raise InvalidArgumentError(f"dataset {source.name} holds text but the model has no tokenizer "
                                       f"(give pre-tokenized input_ids in a .jsonl file)")
        for doc in tokenizer(texts, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]:
            ids.extend(doc)
    for doc in source.token_ids:
        ids.extend(doc)
    return ids


def load_tokenizer(model_dir: str | Path):
    """The model's own tokenizer, or None where the directory has none."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                      "vocab.json")):
        return None
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # transformers raises OSError, ValueError, ... for a broken tokenizer
        raise InvalidArgumentError(f"the tokenizer in {model_dir} cannot be loaded: {e}") from None

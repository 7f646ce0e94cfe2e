"""Stop strings across token boundaries, hold-back, and release at the end."""
from __future__ import annotations

from vlmserve.outputs import TokenOutput
from vlmserve.text_stream import TextStreamer


class CharTokenizer:
    """Token i is chr(i); decoding joins characters (enough to test text logic)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def run(text: str, stop: list[str]):
    s = TextStreamer(CharTokenizer(), stop)
    out, matched = [], None
    for ch in text:
        c = s.push(TokenOutput(ord(ch)))
        out.append(c.text)
        if c.matched_stop:
            matched = c.matched_stop
            break
    if not matched:
        out.append(s.flush())
    return out, matched


def test_stop_string_split_over_tokens_is_not_leaked():
    out, matched = run("Hello END world", ["END"])
    assert "".join(out) == "Hello " and matched == "END"
    assert "E" not in "".join(out)


def test_partial_match_is_released_when_it_fails():
    out, matched = run("an ENtry", ["END"])
    assert matched is None and "".join(out) == "an ENtry"
    # "EN" was held back until "t" showed it was not the stop string
    assert out[3] == "" and out[4] == ""


def test_earliest_of_several_stops_wins_and_no_stop_streams_everything():
    assert run("abc###def", ["def", "###"])[1] == "###"
    out, matched = run("plain text", [])
    assert "".join(out) == "plain text" and all(len(t) == 1 for t in out[:-1])


def test_push_many_releases_what_single_pushes_release_without_stop_strings():
    import pytest

    text = "tokens in groups, as a message of several carries them"
    single = TextStreamer(CharTokenizer())
    grouped = TextStreamer(CharTokenizer())
    one = "".join(single.push(TokenOutput(ord(ch))).text for ch in text) + single.flush()
    parts = [text[i:i + 3] for i in range(0, len(text), 3)]
    chunks = [grouped.push_many([TokenOutput(ord(ch)) for ch in part]) for part in parts]
    assert "".join(c.text for c in chunks) + grouped.flush() == one == text
    assert [c.token_ids for c in chunks] == [[ord(ch) for ch in part] for part in parts]
    with pytest.raises(ValueError, match="stop strings"):
        TextStreamer(CharTokenizer(), ["END"]).push_many([TokenOutput(65)])

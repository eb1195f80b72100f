"""Scheduler pieces without an engine: prompt encoding and the text stream with stop strings."""

from __future__ import annotations

import pytest

from model import build_char_tokenizer
from service.api.scheduler import TextStream, encode_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def _push_text(stream: TextStream, tokenizer, text: str) -> tuple[list[str], bool]:
    pieces = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        piece, stopped = stream.push(token)
        pieces.append(piece)
        if stopped:
            return pieces, True
    return pieces, False


def test_prompt_gets_the_tokenizers_bos_in_front(tokenizer):
    ids = encode_prompt(tokenizer, "3 5>8\n")
    assert ids[0] == tokenizer.bos_token_id
    assert ids[1:] == tokenizer("3 5>8\n", add_special_tokens=False)["input_ids"]


def test_prompt_gets_no_bos_when_the_tokenizer_has_none():
    tokenizer = build_char_tokenizer()
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None
    assert encode_prompt(tokenizer, "ab") == tokenizer("ab", add_special_tokens=False)["input_ids"]


def test_text_without_stop_strings_is_released_token_by_token(tokenizer):
    stream = TextStream(tokenizer)
    pieces, stopped = _push_text(stream, tokenizer, "12+3=15\n")
    assert pieces == list("12+3=15\n") and not stopped
    assert stream.text == "12+3=15\n" and stream.flush() == ""


def test_stop_string_ends_the_text_before_it_and_pieces_concatenate_to_the_text(tokenizer):
    stream = TextStream(tokenizer, stop=["=1", "\n\n"])
    pieces, stopped = _push_text(stream, tokenizer, "12+3=15\n")
    assert stopped
    assert stream.text == "12+3"
    assert "".join(pieces) == stream.text


def test_text_that_may_begin_a_stop_string_is_held_back_then_released(tokenizer):
    stream = TextStream(tokenizer, stop=["END"])
    pieces, stopped = _push_text(stream, tokenizer, "aEN")
    assert not stopped and "".join(pieces) == "a"  # "EN" could still become "END"
    piece, stopped = stream.push(tokenizer("x", add_special_tokens=False)["input_ids"][0])
    assert piece == "ENx" and not stopped
    _push_text(stream, tokenizer, "E")
    assert stream.flush() == "E"  # at the end, held text belongs to the output
    assert stream.text == "aENxE"


def test_the_earliest_of_several_stop_strings_wins(tokenizer):
    stream = TextStream(tokenizer, stop=["cd", "bcde"])
    pieces, stopped = _push_text(stream, tokenizer, "abcdef")
    assert stopped and stream.text == "ab" and "".join(pieces) == "ab"


def test_special_tokens_release_no_text(tokenizer):
    stream = TextStream(tokenizer)
    assert stream.push(tokenizer.eos_token_id) == ("", False)

"""Query text and bbox validation, including property-based fuzzing of the parsers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftfsearch.errors import BadInput
from ftfsearch.search import MAX_QUERY_CHARS, clean_query, parse_bbox


class _Counter:
    """The two Encoder members clean_query uses: a whitespace token count and a limit."""

    max_text_tokens = 8

    def count_text_tokens(self, text: str) -> int:
        return len(text.split())


def test_bbox_parses_and_rejects_bad_boxes():
    assert parse_bbox("-78.9,23.1,-76.5,26") == (-78.9, 23.1, -76.5, 26.0)
    assert parse_bbox(None) is None
    assert parse_bbox("0,0,0,1") == (0.0, 0.0, 0.0, 1.0)  # a line, as the store takes it (a point box finds its tiles)
    for bad in ["", "1,2,3", "a,b,c,d", "1,2,3,4,5", "10,0,5,1", "0,10,1,5", "-200,0,0,1", "0,-91,1,0",
                "nan,0,1,1", "0,0,inf,1"]:
        with pytest.raises(BadInput) as info:
            parse_bbox(bad)
        assert str(info.value).startswith(f"bbox {bad!r}: ")


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_bbox_parser_never_raises_anything_but_badinput(value):
    try:
        box = parse_bbox(value)
    except BadInput:
        return
    w, s, e, n = box
    assert -180 <= w <= e <= 180 and -90 <= s <= n <= 90 and all(math.isfinite(v) for v in box)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4))
@settings(max_examples=300, deadline=None)
def test_bbox_from_numbers(values):
    text = ",".join(repr(v) for v in values)
    try:
        box = parse_bbox(text)
    except BadInput:
        return
    assert box == tuple(values)


def test_query_cleaning():
    enc = _Counter()
    assert clean_query("  ships\tnear\n a harbor ", enc)[0] == "ships near a harbor"
    assert clean_query("ships\x00\x07 harbor", enc)[0] == "ships harbor"
    for empty in ["", "   ", "\n\t", "\x00\x01"]:
        with pytest.raises(BadInput, match="query"):
            clean_query(empty, enc)
    text, warnings = clean_query("word " * 20, enc)
    assert warnings and "truncated" in warnings[0]
    long, warnings = clean_query("x" * 20000, enc)
    assert len(long) == MAX_QUERY_CHARS and warnings


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_query_cleaning_fuzz(value):
    try:
        text, _ = clean_query(value, _Counter())
    except BadInput:
        assert not value.strip() or all(not c.isprintable() or c.isspace() for c in value)
        return
    assert text and text == text.strip() and len(text) <= MAX_QUERY_CHARS

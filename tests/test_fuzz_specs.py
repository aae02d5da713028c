"""Fuzzing the block, step and layer spec grammar (:mod:`dumpunet.specs`): a value or a SpecError, fast."""

from __future__ import annotations

import pytest
from fuzz import FUZZ, outcome, pieces, repeated
from hypothesis import given
from hypothesis import strategies as st

from dumpunet.errors import SpecError
from dumpunet.specs import (
    MAX_OPEN_RANGE,
    SD1_BLOCKS,
    SDXL_BLOCKS,
    check_ints,
    format_ints,
    parse_blocks,
    parse_ints,
    parse_layers,
)

BLOCK_WORDS = ["IN00", "in05", "IN11", "IN12", "M00", "M01", "OUT00", "OUT11", "OUT99", "down_blocks.1.attentions.0",
               "conv_in", "-", ",", ", ", "(", ")", "+", "(+2)", "(+0)", "(+", "2", " "]
INT_WORDS = ["0", "1", "5", "20", "21", "-", ",", "(", ")", "+", "(+3)", "(+0)", " ", "1-20", "1-999999999"]
LAYERS = ["IN01.attn1", "IN01.attn2", "IN04.attn2.0", "IN04.attn2.1", "M00.attn2", "OUT11.attn1", "OUT11.attn2"]
ALIASES = {"conv_in": "IN00", "down_blocks.1.attentions.0": "IN04"}


@FUZZ
@given(pieces(BLOCK_WORDS), st.sampled_from([SD1_BLOCKS, SDXL_BLOCKS]))
def test_block_specs_select_known_blocks_in_order_or_say_why(text, blocks):
    got = outcome(SpecError, parse_blocks, text, blocks, aliases=ALIASES)
    if not isinstance(got, SpecError):
        assert got == [b for b in blocks if b in got]  # model order, no repeats


@FUZZ
@given(pieces(INT_WORDS, LAYERS + BLOCK_WORDS))
def test_layer_specs_select_known_layers_or_say_why(text):
    got = outcome(SpecError, parse_layers, text, LAYERS, SD1_BLOCKS, aliases=ALIASES)
    if not isinstance(got, SpecError):
        assert got == [name for name in LAYERS if name in got]


@FUZZ
@given(pieces(INT_WORDS), st.integers(0, 3), st.one_of(st.none(), st.integers(0, 50)))
def test_int_specs_stay_inside_their_bounds_or_say_why(text, lo, hi):
    if hi is not None and hi < lo:
        hi = lo
    if hi is None and not text.strip():
        return  # "everything" needs a known end: a ValueError for the caller, tested in test_specs
    got = outcome(SpecError, parse_ints, text, lo, hi)
    if not isinstance(got, Exception):
        assert got == sorted(set(got))
        assert all(v >= lo for v in got) and (hi is None or all(v <= hi for v in got))
        assert hi is not None or len(got) <= MAX_OPEN_RANGE
    checked = outcome(SpecError, check_ints, text, lo, hi)
    assert isinstance(checked, SpecError) == isinstance(got, SpecError)


@FUZZ
@given(st.lists(st.integers(0, 10**6), max_size=30))
def test_format_ints_reads_back_through_the_grammar(values):
    text = format_ints(values)
    assert (parse_ints(text, 0, 10**6) if text else []) == sorted(set(values))


@FUZZ
@given(repeated("1-2,", up_to=2000))
def test_long_specs_are_read_in_linear_time(text):
    assert outcome(SpecError, parse_ints, text, 1, 20) is not None


@pytest.mark.parametrize("hi", [None, 20])
def test_a_huge_range_is_refused_before_it_is_expanded(hi):
    with pytest.raises(SpecError) as err:
        parse_ints("1-999999999", 1, hi)
    expected = ("range selects 999999999 steps, more than 100000 without a known end\n  1-999999999\n  ^^^^^^^^^^^"
                if hi is None else "step 999999999 out of range 1..20\n  1-999999999\n    ^^^^^^^^^")
    assert str(err.value) == "bad step spec: " + expected


def test_many_ranges_without_a_known_end_are_bounded_together():
    with pytest.raises(SpecError) as err:
        parse_ints("1-60000, 60001-120000", 1, None)
    assert str(err.value) == ("bad step spec: the ranges up to here select 120000 steps, more than 100000 without a "
                              "known end\n  1-60000, 60001-120000\n           ^^^^^^^^^^^^")


def test_check_ints_checks_bounds_without_expanding():
    check_ints("1-999999999(+2), 7", 1)
    with pytest.raises(SpecError, match=r"step 0 out of range 1\.\."):
        check_ints("5, 0-3", 1)


@pytest.mark.parametrize("text", ["9" * 19, "9" * 5000, "1-" + "9" * 5000, "1-5(+" + "9" * 30 + ")"])
def test_numbers_too_long_for_int_are_a_spec_error(text):
    with pytest.raises(SpecError, match="number too large"):
        parse_ints(text, 0, None)

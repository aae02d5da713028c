"""The block/step grammar: selections, module-path aliases and caret errors."""

from __future__ import annotations

import pytest

from dumpunet.errors import SpecError
from dumpunet.specs import SD1_BLOCKS, SDXL_BLOCKS, format_ints, parse_blocks, parse_ints, parse_steps, resolve_block


def test_block_lists_follow_the_community_names():
    assert len(SD1_BLOCKS) == 25 and SD1_BLOCKS[0] == "IN00" and SD1_BLOCKS[12] == "M00" and SD1_BLOCKS[-1] == "OUT11"
    assert len(SDXL_BLOCKS) == 19 and SDXL_BLOCKS[9] == "M00" and SDXL_BLOCKS[-1] == "OUT08"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("IN00", ["IN00"]),
        ("IN00, IN01, M00", ["IN00", "IN01", "M00"]),
        ("M00,IN00", ["IN00", "M00"]),
        ("in05", ["IN05"]),
        ("IN10-OUT01", ["IN10", "IN11", "M00", "OUT00", "OUT01"]),
        (
            "IN00-OUT11(+2)",
            ["IN00", "IN02", "IN04", "IN06", "IN08", "IN10", "M00", "OUT01", "OUT03", "OUT05", "OUT07", "OUT09", "OUT11"],
        ),
        ("IN00-IN11 ( + 4 )", ["IN00", "IN04", "IN08"]),
        ("IN00-IN02(+1)", ["IN00", "IN01", "IN02"]),
        ("IN00, IN00-IN01, IN01", ["IN00", "IN01"]),
        ("OUT11-OUT11", ["OUT11"]),
        ("M00, OUT00-OUT02, IN11", ["IN11", "M00", "OUT00", "OUT01", "OUT02"]),
    ],
)
def test_block_specs_select_in_model_order(spec, expected):
    assert parse_blocks(spec, SD1_BLOCKS) == expected


def test_empty_spec_selects_every_block():
    assert parse_blocks("", SD1_BLOCKS) == list(SD1_BLOCKS)
    assert parse_blocks("   ", SDXL_BLOCKS) == list(SDXL_BLOCKS)


def test_full_range_is_all_25_blocks():
    assert parse_blocks("IN00-OUT11", SD1_BLOCKS) == list(SD1_BLOCKS)


@pytest.mark.parametrize(
    ("spec", "message", "caret"),
    [
        ("IN12", "unknown block 'IN12' (this model has IN00..OUT11)", "^^^^"),
        ("IN00-IN12(+2)", "unknown block 'IN12' (this model has IN00..OUT11)", "     ^^^^"),
        ("OUT11-IN00", "range OUT11-IN00 runs backwards (write IN00-OUT11)", "^^^^^^^^^^"),
        ("IN00-OUT11(+2", "expected ')' after '+2', got the end", "             ^"),
        ("IN00-OUT11(2)", "expected '+' after '(' (a range step looks like '(+2)'), got '2'", "           ^"),
        ("IN00-OUT11(+0)", "range step must be at least +1", "            ^"),
        ("IN00,", "expected a block name after ',', got the end", "     ^"),
        ("IN00 IN01", "expected ',' or the end, got 'IN01'", "     ^"),
        ("IN00(+2)", "a step '(+N)' needs a range before it, like 'IN00-OUT11(+2)'", "    ^"),
        ("IN00;M00", "unexpected character ';'", "    ^"),
        ("IN00-", "expected a block name after 'IN00-', got the end", "     ^"),
    ],
)
def test_block_spec_errors_name_the_problem_with_a_caret(spec, message, caret):
    with pytest.raises(SpecError) as err:
        parse_blocks(spec, SD1_BLOCKS)
    assert str(err.value) == f"bad block spec: {message}\n  {spec}\n  {caret}"
    assert isinstance(err.value, ValueError)


def test_sd1_names_are_unknown_on_sdxl():
    with pytest.raises(SpecError, match=r"unknown block 'IN11' \(this model has IN00..OUT08\)"):
        parse_blocks("IN00-IN11", SDXL_BLOCKS)


ALIASES = {
    "conv_in": "IN00",
    "down_blocks.0.resnets.0": "IN01",
    "down_blocks.0.attentions.0": "IN01",
    "mid_block": "M00",
    "up_blocks.3.attentions.2": "OUT11",
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IN01", "IN01"),
        ("in01", "IN01"),
        ("conv_in", "IN00"),
        ("down_blocks.0.attentions.0", "IN01"),
        ("Down_Blocks.0.Resnets.0", "IN01"),
        ("mid_block", "M00"),
        ("up_blocks.3.attentions.2", "OUT11"),
        ("up_blocks.9.attentions.0", None),
        ("IN99", None),
    ],
)
def test_resolve_block_accepts_names_and_module_paths(name, expected):
    assert resolve_block(name, SD1_BLOCKS, ALIASES) == expected


def test_module_paths_work_in_ranges():
    assert parse_blocks("conv_in-down_blocks.0.attentions.0, mid_block", SD1_BLOCKS, aliases=ALIASES) == ["IN00", "IN01", "M00"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1,5,10", [1, 5, 10]),
        ("1-20", list(range(1, 21))),
        ("1-20(+5)", [1, 6, 11, 16]),
        ("20, 1", [1, 20]),
        ("", list(range(1, 21))),
        ("3-3", [3]),
    ],
)
def test_step_specs(spec, expected):
    assert parse_steps(spec, 20) == expected


@pytest.mark.parametrize(
    ("spec", "message", "caret"),
    [
        ("0", "step 0 out of range 1..20", "^"),
        ("1-21", "step 21 out of range 1..20", "  ^^"),
        ("10-1", "range 10-1 runs backwards (write 1-10)", "^^^^"),
        ("1-20(+5", "expected ')' after '+5', got the end", "       ^"),
        ("IN00", "expected a number at the start of an item, got 'IN00'", "^"),
        ("1,,2", "expected a number after ',', got ','", "  ^"),
    ],
)
def test_step_spec_errors(spec, message, caret):
    with pytest.raises(SpecError) as err:
        parse_steps(spec, 20)
    assert str(err.value) == f"bad step spec: {message}\n  {spec}\n  {caret}"


def test_unknown_upper_bound_checks_only_the_lower_one():
    assert parse_ints("1-500", 1, None) == list(range(1, 501))
    with pytest.raises(SpecError, match=r"step 0 out of range 1\.\."):
        parse_ints("0", 1, None)


def test_channels_use_the_same_grammar():
    assert parse_ints("0-7(+2)", 0, 319, noun="channel", what="channel spec") == [0, 2, 4, 6]
    with pytest.raises(SpecError, match=r"^bad channel spec: channel 320 out of range 0\.\.319"):
        parse_ints("320", 0, 319, noun="channel", what="channel spec")


@pytest.mark.parametrize(
    ("values", "text"),
    [([], ""), ([3], "3"), ([1, 2, 3, 5], "1-3,5"), ([5, 1, 2, 2], "1-2,5"), ([1, 3, 5], "1,3,5")],
)
def test_format_ints_round_trips_through_the_grammar(values, text):
    assert format_ints(values) == text
    if values:
        assert parse_ints(text, 0, None) == sorted(set(values))


XL_LAYERS = ["IN04.attn1.0", "IN04.attn2.0", "IN04.attn1.1", "IN04.attn2.1", "M00.attn1.0", "M00.attn2.0", "OUT05.attn2.1"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", XL_LAYERS),
        ("IN04", XL_LAYERS[:4]),
        ("in04.attn2.1", ["IN04.attn2.1"]),
        ("M00-OUT08", ["M00.attn1.0", "M00.attn2.0", "OUT05.attn2.1"]),
        ("OUT05.attn2.1, IN04.attn1.0", ["IN04.attn1.0", "OUT05.attn2.1"]),
        ("IN00-IN03", []),
    ],
)
def test_layer_specs_take_layer_names_and_blocks(spec, expected):
    from dumpunet.specs import parse_layers

    assert parse_layers(spec, XL_LAYERS, SDXL_BLOCKS) == expected


def test_layer_spec_errors_point_into_the_spec():
    from dumpunet.specs import parse_layers

    with pytest.raises(SpecError) as err:
        parse_layers("IN04.attn2.0, IN12", XL_LAYERS, SDXL_BLOCKS, what="--layers")
    assert str(err.value) == "bad --layers: unknown block 'IN12' (this model has IN00..OUT08)\n  IN04.attn2.0, IN12\n                ^^^^"

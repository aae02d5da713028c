"""Fuzzing colour expressions (:mod:`dumpunet.analyzer.color.expressions`): a value or an ExpressionError, fast.

A valid expression evaluates to a float64 array of ``v``'s shape on any input (NaN, ±inf
included).
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz import FUZZ, outcome, pieces, repeated
from hypothesis import given
from hypothesis import strategies as st

from dumpunet.analyzer.color.expressions import (
    FUNCTIONS,
    MAX_DEPTH,
    evaluate,
    parse_expression,
)
from dumpunet.errors import ExpressionError

WORDS = ["v", "v ", "pi", "e", "1", "0.5", "2e-3", "1e308", "0", "+", "-", "*", "/", "//", "**", "%", "(", ")", ",",
         "<", "<=", "==", "!=", " if ", " else ", " and ", " or ", " not ", "x", "v.real", "v[0]", "lambda: 1",
         "__import__", "'s'", "[1]", "{}", "@", "~", "&", ";", ":=", "\n", *[f"{name}(" for name in FUNCTIONS]]
VALUES = np.array([-np.inf, -1e300, -2.5, -1.0, -0.0, 0.0, 1e-300, 0.5, 1.0, 3.0, 1e300, np.inf, np.nan])


@FUZZ
@given(pieces(WORDS, max_size=20))
def test_any_text_is_an_expression_or_an_error_with_a_caret(text):
    expr = outcome(ExpressionError, parse_expression, text, name="H")
    if isinstance(expr, ExpressionError):
        assert str(expr).startswith("bad expression: H: ")
        return
    out = evaluate(expr, VALUES)
    assert out.dtype == np.float64 and out.shape == VALUES.shape


@FUZZ
@given(st.sampled_from(["-", "+", "abs(", "(", "sin(", "-(", "v+(", "1 if v else ", "v<"]).flatmap(repeated))
def test_deep_nesting_is_refused_with_a_caret_not_a_recursion_error(text):
    if text.endswith("("):
        text += "v" + ")" * text.count("(")
    elif not text.endswith("v"):
        text += "v"
    outcome(ExpressionError, parse_expression, text)


@pytest.mark.parametrize("op", ["-", "+"])
def test_a_thousand_unary_operators_get_the_depth_message(op):
    text = op * 990 + "v"
    with pytest.raises(ExpressionError) as err:
        parse_expression(text, name="H")
    lines = str(err.value).split("\n")
    assert lines[0] == f"bad expression: H: expression nests more than {MAX_DEPTH} levels deep"
    assert len(lines[1]) < 110 and lines[1].startswith("  …")  # a window of the long text, not all of it
    assert set(lines[2].strip()) == {"^"}


def test_nesting_up_to_the_limit_is_fine():
    text = "-" * (MAX_DEPTH - 1) + "v"  # 99 operators and v: 100 levels
    np.testing.assert_array_equal(evaluate(text, np.array([2.0])), [-2.0])
    with pytest.raises(ExpressionError, match="nests more than 100 levels"):
        parse_expression("-" + text)


@pytest.mark.parametrize(
    ("text", "shown", "caret"),
    [
        ("1 +\t\x1b v", "1 + \ufffd v", "      ^"),
        ("v\x00", "v\ufffd", "   ^"),
        ("\x1b[31mv", "\ufffd[31mv", "  ^"),
    ],
)
def test_control_characters_are_shown_as_one_visible_character_each(text, shown, caret):
    with pytest.raises(ExpressionError) as err:
        parse_expression(text)
    _, line, under = str(err.value).split("\n")
    assert (line, under) == ("  " + shown, caret)

"""The expression whitelist: what parses, what it computes, and how refusals point at the text."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dumpunet.analyzer.color.expressions import evaluate, parse_expression
from dumpunet.errors import ExpressionError

V = np.array([-2.5, -1.0, -0.25, 0.0, 0.3, 0.5, 1.0, 4.0, np.nan, np.inf, -np.inf])

ACCEPTED = [
    ("abs(v)", lambda v: np.abs(v)),
    ("(2+v)/3", lambda v: (2 + v) / 3),
    ("1.0", lambda v: np.full_like(v, 1.0)),
    ("-v + +v * 2", lambda v: -v + v * 2),
    ("v ** 2 - v % 0.5", lambda v: v**2.0 - np.remainder(v, 0.5)),
    ("2 ** v", lambda v: np.power(2.0, v)),
    ("sqrt(v) + exp(v) - log(v)", lambda v: np.sqrt(v) + np.exp(v) - np.log(v)),
    ("log2(v) * log10(v)", lambda v: np.log2(v) * np.log10(v)),
    ("sin(v) + cos(v) + tan(v)", lambda v: np.sin(v) + np.cos(v) + np.tan(v)),
    ("tanh(v) + arctan(v) + atan(v)", lambda v: np.tanh(v) + 2 * np.arctan(v)),
    ("floor(v) + ceil(v) + sign(v)", lambda v: np.floor(v) + np.ceil(v) + np.sign(v)),
    ("sigmoid(v)", lambda v: 1.0 / (1.0 + np.exp(-v))),
    ("min(v, 0.5) + max(v, 0) + minimum(v, 1) + maximum(v, -1)",
     lambda v: np.minimum(v, 0.5) + np.maximum(v, 0) + np.minimum(v, 1) + np.maximum(v, -1)),
    ("clip(v, 0, 1)", lambda v: np.minimum(np.maximum(v, 0.0), 1.0)),
    ("where(v > 0, v, -v)", lambda v: np.where(v > 0, v, -v)),
    ("where(v - v, 1, 2)", lambda v: np.where(v - v != 0, 1.0, 2.0)),  # NaN is true, as in numpy
    ("(v < 0) + (v <= 0) + (v > 0) + (v >= 0) + (v == 0) + (v != 0)",
     lambda v: (v < 0) * 1.0 + (v <= 0) + (v > 0) + (v >= 0) + (v == 0) + (v != 0)),
    ("0 < v < 1", lambda v: ((0 < v) & (v < 1)) * 1.0),
    ("pi * e * v", lambda v: np.pi * np.e * v),
    ("1/v + 1/0 - 0/0", lambda v: 1 / v + np.inf - np.nan),
    ("  (v\n + 1)  ", lambda v: v + 1),
    # numpy functions and Python syntax the original accepted (it evaluated one value at a time)
    ("power(v, 3) + square(v)", lambda v: np.power(v, 3.0) + np.square(v)),
    ("round(v) + round(3.3 * v, 1) + round(v, -1)", lambda v: np.round(v) + np.round(3.3 * v, 1) + np.round(v, -1)),
    ("arcsin(v) + arccos(v) + asin(v) - acos(v)", lambda v: np.arcsin(v) + np.arccos(v) + np.arcsin(v) - np.arccos(v)),
    ("sinh(v) + cosh(v) + tanh(v)", lambda v: np.sinh(v) + np.cosh(v) + np.tanh(v)),
    ("fmod(v, 0.3) + hypot(v, 2)", lambda v: np.fmod(v, 0.3) + np.hypot(v, 2.0)),
    ("v // 0.3 + 7 // v", lambda v: np.floor_divide(v, 0.3) + np.floor_divide(7.0, v)),
    ("v if v > 0 else -v", lambda v: np.where(v > 0, v, -v)),
    ("1 if v - v else 2", lambda v: np.where(v - v != 0, 1.0, 2.0)),  # NaN is true, as in Python
    ("v and 2", lambda v: np.where(v != 0, 2.0, v)),  # Python: a if not a else b
    ("v or 2", lambda v: np.where(v != 0, v, 2.0)),  # Python: a if a else b
    ("v > 0 and v < 1 and 5", lambda v: np.where((v > 0) & (v < 1), 5.0, 0.0)),
    ("v < 0 or 0.5 or v", lambda v: np.where(v < 0, 1.0, 0.5)),
]


@pytest.mark.parametrize(("text", "fn"), ACCEPTED, ids=[t for t, _ in ACCEPTED])
def test_accepted_expressions_compute_what_numpy_computes(text, fn):
    with np.errstate(all="ignore"):
        expected = fn(V.copy()).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning leaks out of evaluate
        got = evaluate(parse_expression(text), V)
    assert got.shape == V.shape and got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


def test_constant_expression_fills_the_shape_of_v():
    got = evaluate("0.5", np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(got, np.full((2, 3), 0.5))


def _err(text: str, name: str | None = None) -> str:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text, name=name)
    assert isinstance(info.value, ValueError)
    return str(info.value)


ALLOWED = (
    "abs, acos, arccos, arcsin, arctan, asin, atan, ceil, clip, cos, cosh, exp, floor, fmod, hypot, log, log10, log2, "
    "max, maximum, min, minimum, power, round, sigmoid, sign, sin, sinh, sqrt, square, tan, tanh, where"
)

# (text, message, caret line): the caret line is exactly what str(err) shows under the text.
REJECTED = [
    ("__import__('os')", f"function '__import__' is not allowed (allowed: {ALLOWED})", "^^^^^^^^^^"),
    ("v.__class__", "attribute access '.__class__' is not allowed", "^^^^^^^^^^^"),
    ("().__class__", "attribute access '.__class__' is not allowed", "^^^^^^^^^^^^"),
    ("abs(v).real", "attribute access '.real' is not allowed", "^^^^^^^^^^^"),
    ("lambda: 1", "lambda is not allowed", "^^^^^^^^^"),
    ("v[0]", "subscripts like v[0] are not allowed", "^^^^"),
    ("x", "name 'x' is not allowed (use v, pi or e)", "^"),
    ("v + 2*x", "name 'x' is not allowed (use v, pi or e)", "      ^"),
    ("eval('1')", f"function 'eval' is not allowed (allowed: {ALLOWED})", "^^^^"),
    ("open('f')", f"function 'open' is not allowed (allowed: {ALLOWED})", "^^^^"),
    ("abs(v) + exec('1')", f"function 'exec' is not allowed (allowed: {ALLOWED})", "         ^^^^"),
    ("[v for v in v]", "comprehensions are not allowed", "^^^^^^^^^^^^^^"),
    ('"s"', "strings are not allowed (only numbers)", "^^^"),
    ("abs('s')", "strings are not allowed (only numbers)", "    ^^^"),
    ("clip(v, lo=0, hi=1)", "keyword arguments are not allowed", "        ^^^^"),
    ("abs(*v)", "'*' unpacking is not allowed", "    ^^"),
    ("min(v)", "min() takes 2 arguments, got 1", "^^^^^^"),
    ("abs(v, 1)", "abs() takes 1 argument, got 2", "^^^^^^^^^"),
    ("abs", "'abs' is a function: call it, like abs(v)", "^^^"),
    ("v(1)", f"'v' is not a function (allowed: {ALLOWED})", "^"),
    ("v @ 2", "operator '@' is not allowed (allowed: + - * / // ** %)", "^^^^^"),
    ("v & 1", "operator '&' is not allowed (allowed: + - * / // ** %)", "^^^^^"),
    ("not v", "operator 'not' is not allowed (use 1 - c)", "^^^^^"),
    ("round(v, 1, 2)", "round() takes 1 or 2 arguments, got 3", "^^^^^^^^^^^^^^"),
    ("round(v, 0.5)", "round()'s second argument must be a whole number of digits from -15 to 15, like 2", "         ^^^"),
    ("round(v, v)", "round()'s second argument must be a whole number of digits from -15 to 15, like 2", "         ^"),
    ("power(v)", "power() takes 2 arguments, got 1", "^^^^^^^^"),
    # hostile input inside the conditionals and the new functions is refused like anywhere else
    ("v if v.__class__ else 0", "attribute access '.__class__' is not allowed", "     ^^^^^^^^^^^"),
    ("1 if v else [].__class__", "attribute access '.__class__' is not allowed", "            ^^^^^^^^^^^^"),
    ("v and __import__('os')", f"function '__import__' is not allowed (allowed: {ALLOWED})", "      ^^^^^^^^^^"),
    ("(lambda: 1)() or v", "only the listed functions can be called, by name", " ^^^^^^^^^"),
    ("v or (y := 1)", "':=' is not allowed", "      ^^^^^^"),
    ("v // ().__class__", "attribute access '.__class__' is not allowed", "     ^^^^^^^^^^^^"),
    ("hypot(v, open('f'))", f"function 'open' is not allowed (allowed: {ALLOWED})", "         ^^^^"),
    ("power(v, '2')", "strings are not allowed (only numbers)", "         ^^^"),
    ("fmod(v, x)", "name 'x' is not allowed (use v, pi or e)", "        ^"),
    ("round(abs, 1)", "'abs' is a function: call it, like abs(v)", "      ^^^"),
    ("v if v else lambda: 1", "lambda is not allowed", "            ^^^^^^^^^"),
    ("v in v", "operator 'in' is not allowed (allowed: < <= > >= == !=)", "^^^^^^"),
    ("True", "True is not allowed (use 1.0)", "^^^^"),
    ("1j", "complex numbers are not allowed", "^^"),
    ("(v, 1)", "tuples are not allowed", "^^^^^^"),
    ("(y := 1)", "':=' is not allowed", " ^^^^^^"),
    ("v +* 2", "invalid syntax", "   ^"),
    ("  abs(v", "'(' was never closed", "     ^"),
    ("", "expression is empty (write one in v, like abs(v))", "^"),
    ("é + y", "name 'é' is not allowed (use v, pi or e)", "^"),
    ("abs(é)", "name 'é' is not allowed (use v, pi or e)", "    ^"),
]


@pytest.mark.parametrize(("text", "message", "caret"), REJECTED, ids=[t for t, _, _ in REJECTED])
def test_rejected_expressions_say_why_and_point_at_it(text, message, caret):
    assert _err(text) == f"bad expression: {message}\n  {text}\n  {caret}"


def test_error_names_the_field():
    assert _err("x", name="H") == "bad expression: H: name 'x' is not allowed (use v, pi or e)\n  x\n  ^"


def test_caret_position_on_a_later_line_counts_characters():
    with pytest.raises(ExpressionError) as info:
        parse_expression("(v +\n foo)")
    assert (info.value.pos, info.value.length) == (6, 3)


def test_too_long_and_too_large():
    assert "expression is too long (1001 characters, at most 1000)" in _err("v" + "+v" * 500)
    assert "number too large" in _err("1" + "0" * 400)

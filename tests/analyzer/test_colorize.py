"""colorize() against the numpy reference, against hand-computed pixels, and ColorSpec's contract."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reference as ref
from dumpunet.analyzer.color.colorize import ColorSpec, colorize, map_ranges, merge_ranges
from dumpunet.analyzer.color.spec import DIFF_COLOR
from dumpunet.errors import ColorSpecError, ExpressionError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMOOTH = ["abs(v)", "(2+v)/3", "(2-2*v)/3", "v*v", "0.5 + 0.5*sin(6*v)", "sigmoid(4*v)", "1/(1+abs(v))", "1.0", "0.5"]
JUMPY = ["where(v > 0.2, 1, 0.3)", "floor(8*v)/8", "(3*v) % 1", "sign(v)", "clip(40*v, 0, 1)", "sqrt(v)", "log(v) + 1"]


@st.composite
def maps(draw, max_n=5, max_side=6):
    n = draw(st.integers(0, max_n))
    h, w = draw(st.integers(0, max_side)), draw(st.integers(0, max_side))
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    kind = draw(st.sampled_from(["wild", "smooth", "constant"]))
    if kind == "wild":
        elements = st.floats(width=16 if dtype == np.float16 else 32, allow_nan=True, allow_infinity=True)
        return draw(hnp.arrays(dtype, (n, h, w), elements=elements))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w)) * draw(st.sampled_from([0.1, 1.0, 30.0]))
    if kind == "constant":
        x[:] = draw(st.sampled_from([0.0, 0.25, -0.7, 3.0, np.nan]))
        if n and h and w:
            x[0, 0, 0] = draw(st.sampled_from([0.25, np.inf, -np.inf, np.nan]))
    return x.astype(dtype)


@st.composite
def specs(draw):
    method = draw(st.sampled_from(["White/Black", "Red/Blue", "Custom"]))
    transform = draw(st.sampled_from(["Auto [0,1]", "Auto [-1,1]", "autosym", "Linear", "Sigmoid"]))
    lo = draw(st.sampled_from([-1.0, -2.5, 0.0, 0.5, -3.0]))
    hi = draw(st.sampled_from([1.0, 2.0, 4.0]))
    gain, offset = draw(st.sampled_from([1.0, 0.3, 5.0])), draw(st.sampled_from([0.0, -0.5, 2.0]))
    kw = dict(clamp_min=lo, clamp_max=hi, gain=gain, offset=offset)
    if method == "Custom":
        # Under Sigmoid the kernel's exp and numpy's may differ by an ulp: only smooth expressions
        # are then within 1 LSB. Other transforms are exact, so anything goes.
        pool = SMOOTH if transform == "Sigmoid" else SMOOTH + JUMPY
        space = draw(st.sampled_from(["rgb", "hsl"]))
        names = "rgb" if space == "rgb" else "hsl"
        kw.update(space=space, **{n: draw(st.sampled_from(pool)) for n in names})
    return ColorSpec(method, transform, **kw)


@SETTINGS
@given(x=maps(), spec=specs(), mode=st.sampled_from(["map", "pair", "rows", "block"]))
def test_colorize_matches_the_reference(x, spec, mode):
    n = x.shape[0]
    ranges = ref.map_ranges(x)
    minmax = None
    if mode == "pair":
        minmax = merge_ranges(ranges)
        ranges = np.tile(np.asarray(minmax), (n, 1))
    elif mode == "rows":
        minmax = ranges[::-1].copy()  # any per-map ranges, not necessarily the map's own
        ranges = minmax
    elif mode == "block":
        spec = ColorSpec(**{**json.loads(spec.to_json()), "auto_scope": "block"})
        ranges = np.tile(np.asarray(merge_ranges(ranges)), (n, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = colorize(x, spec, minmax=minmax)
    expected = ref.colorize(x, spec, ranges)
    assert got.shape == expected.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - expected)
    if spec.transform == "sigmoid":
        assert diff.max(initial=0) <= 1
    else:
        np.testing.assert_array_equal(got, expected)


@SETTINGS
@given(x=maps(max_n=6, max_side=8))
def test_map_ranges_match_the_reference(x):
    np.testing.assert_array_equal(map_ranges(x), ref.map_ranges(x))


def test_merge_ranges_ignores_nan_and_empty():
    assert merge_ranges(np.array([[0.0, 1.0], [np.nan, np.nan]]), (-3.0, 0.5)) == (-3.0, 1.0)
    lo, hi = merge_ranges(np.full((2, 2), np.nan))
    assert math.isnan(lo) and math.isnan(hi)


def _px(spec, values, **kw):
    x = np.array(values, dtype=np.float32).reshape(1, 1, -1)
    return colorize(x, spec, **kw)[0, 0].tolist()


def test_white_black_by_hand():
    sig = ColorSpec("White/Black", "Sigmoid")  # gain 1, offset 0
    # v=1: sigmoid = 0.7310585786, |. - 0.5| * 2 = 0.4621171573, * 256 = 118.3
    assert _px(sig, [0.0, 100.0, -100.0, 1.0, np.nan]) == [0, 255, 255, 118, 0]
    lin = ColorSpec("White/Black", "Linear")  # clamp -1..1: X = 0, Y = 1
    assert _px(lin, [-0.5, 0.25, 3.0, 0.0]) == [128, 64, 255, 0]
    lin2 = ColorSpec("White/Black", "Linear", clamp_min=0.5, clamp_max=2.0)  # X = 0.5, Y = 2
    assert _px(lin2, [1.25, 0.0, 2.0]) == [128, 0, 255]
    # Auto [-1,1] goes to the pixel as it is, like the original's: the lower half of the range is black.
    assert _px(ColorSpec("White/Black", "Auto [-1,1]"), [0.0, 1.0, 1.5, 2.0]) == [0, 0, 128, 255]
    # inf lands on the end of the finite range; NaN is black.
    auto = ColorSpec("White/Black", "Auto [0,1]")
    assert _px(auto, [0.0, 0.5, 1.0, np.inf, -np.inf, np.nan]) == [0, 128, 255, 255, 0, 0]


def test_constant_maps_pass_through_unchanged():
    assert _px(ColorSpec("White/Black", "Auto [0,1]"), [0.25, 0.25]) == [64, 64]
    assert _px(ColorSpec("White/Black", "Auto [0,1]"), [3.0, 3.0]) == [255, 255]
    assert _px(ColorSpec("White/Black", "Auto [-1,1]"), [-0.5, -0.5]) == [0, 0]  # the original's black
    assert _px(ColorSpec("Red/Blue", "Auto [-1,1]"), [-0.5, -0.5]) == [[0, 0, 128], [0, 0, 128]]


def test_red_blue_by_hand():
    rb = ColorSpec("Red/Blue", "Linear")  # clamp -1..1
    # v = 0.5: ((1.5/2) - 0.5) * 2 = 0.5 -> trunc(0.5 * 256) = 128
    assert _px(rb, [0.5, -0.25, 2.0, 0.0, np.nan]) == [[128, 0, 0], [0, 0, 64], [255, 0, 0], [0, 0, 0], [0, 0, 0]]
    sig = ColorSpec("Red/Blue", "Sigmoid", gain=2.0, offset=0.5)
    # v = 0: sigmoid(2 * 0.5) = 0.7310585786 -> 0.4621171573 -> 118
    assert _px(sig, [0.0, -0.5]) == [[118, 0, 0], [0, 0, 0]]


def test_custom_by_hand():
    # Default: Custom, HSL, Auto [0,1], H = (2+v)/3, S = 1, L = 0.5: blue -> magenta -> red.
    assert _px(ColorSpec(), [0.0, 0.5, 1.0]) == [[0, 0, 255], [255, 0, 255], [255, 0, 0]]
    gray = ColorSpec("Custom", "Linear", space="rgb", r="abs(v)", g="abs(v)", b="abs(v)")
    assert _px(gray, [-0.5, 0.25]) == [[128, 128, 128], [64, 64, 64]]
    # Division by zero and log of negatives give inf/NaN, clipped or black, never an error.
    odd = ColorSpec("Custom", "Linear", space="rgb", r="1/v", g="log(v)", b="0/v")
    assert _px(odd, [0.0, -0.5, 0.5]) == [[255, 0, 0], [0, 0, 0], [255, 0, 0]]


def test_autosym_puts_zero_at_the_middle_colour_whatever_the_range():
    rb = ColorSpec("Red/Blue", "autosym")
    # m = max(|-1|, |2|) = 2: t = v / 2; zero is black (no red, no blue) although the range is not symmetric.
    assert _px(rb, [-1.0, 0.0, 2.0, 1.0]) == [[0, 0, 128], [0, 0, 0], [255, 0, 0], [128, 0, 0]]
    # A map without negative values takes only the red half: its smallest value is not blue.
    assert _px(rb, [0.5, 1.0, 2.0]) == [[64, 0, 0], [128, 0, 0], [255, 0, 0]]
    # A shared range (-0.5, 4) is made symmetric too: m = 4.
    assert _px(rb, [0.0, 2.0], minmax=(-0.5, 4.0)) == [[0, 0, 0], [128, 0, 0]]


def test_diff_default_is_white_at_zero_and_full_red_and_blue_at_the_data_extremes():
    x = np.array([[[-3.0, 0.0, 1.5, 0.75]]], np.float32)  # m = 3, whatever the scale of the data
    for scale in (1.0, 2.0**-10, 32.0):
        px = colorize(x * np.float32(scale), DIFF_COLOR)[0, 0].tolist()
        assert px[:2] == [[0, 0, 255], [255, 255, 255]]  # -m: blue, 0: white
        assert px[2] == [255, 128, 128]  # +m/2: halfway from white to red
    # A non-negative map (a norm average) runs from white at 0 to red at its max only.
    norm = np.array([[[0.0, 2.0, 4.0]]], np.float32)
    assert colorize(norm, DIFF_COLOR)[0, 0].tolist() == [[255, 255, 255], [255, 128, 128], [255, 0, 0]]


def test_minmax_forms_agree():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    spec = ColorSpec("Red/Blue", "Auto [-1,1]")
    pair = colorize(x, spec, minmax=(-2.0, 2.0))
    np.testing.assert_array_equal(pair, colorize(x, spec, minmax=np.tile([-2.0, 2.0], (3, 1))))
    np.testing.assert_array_equal(colorize(x, spec), colorize(x, spec, minmax=map_ranges(x)))
    with pytest.raises(ValueError, match=r"minmax must be a \(min, max\) pair or an \[N, 2\] array with N = 3"):
        colorize(x, spec, minmax=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"minmax\[0\] = \(1.0, 0.0\) has min > max"):
        colorize(x, spec, minmax=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"minmax must be finite \(NaN for a map without finite values\)"):
        colorize(x, spec, minmax=(-np.inf, 0.0))


def test_out_is_written_in_place():
    x = np.zeros((2, 3, 4), np.float16)
    out = np.full((2, 3, 4, 3), 7, np.uint8)
    assert colorize(x, ColorSpec(), out=out) is out
    with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8 array of shape \(2, 3, 4\)"):
        colorize(x, ColorSpec("White/Black"), out=out)
    with pytest.raises(TypeError, match="maps must be float16, float32 or float64, got int32"):
        colorize(np.zeros((1, 2, 2), np.int32), ColorSpec())
    with pytest.raises(ValueError, match=r"maps must be \[N, H, W\], got shape \(2, 2\)"):
        colorize(np.zeros((2, 2), np.float32), ColorSpec())


def test_spec_defaults_are_the_original_ui_defaults():
    spec = ColorSpec()
    assert (spec.method, spec.transform, spec.space) == ("Custom", "auto01", "hsl")
    assert (spec.clamp_min, spec.clamp_max, spec.gain, spec.offset) == (-1.0, 1.0, 1.0, 0.0)
    assert (spec.h, spec.s, spec.l, spec.r) == ("(2+v)/3", "1.0", "0.5", "abs(v)")


def test_spec_parses_ui_names():
    assert ColorSpec("white/black", "AUTO [-1, 1]").transform == "auto11"
    assert ColorSpec(transform="Auto [-m,m]").transform == "autosym"
    assert ColorSpec("Red/Blue", "auto01").method == "Red/Blue"
    assert ColorSpec(space="RGB").space == "rgb"
    assert ColorSpec(gain=np.float32(2.0)).gain == 2.0 and type(ColorSpec(gain=np.float32(2.0)).gain) is float
    with pytest.raises(ColorSpecError, match=r"unknown colorize method 'Blue' \(valid: Custom, PCA, Red/Blue, White/Black\)"):
        ColorSpec("Blue")
    with pytest.raises(ColorSpecError, match=r"unknown value transform 'log' \(valid: auto01, auto11, autosym, linear, sigmoid\)"):
        ColorSpec(transform="log")
    with pytest.raises(ColorSpecError, match=r"clamp_min \(1.0\) must be less than clamp_max \(1.0\)"):
        ColorSpec(clamp_min=1.0, clamp_max=1.0)
    with pytest.raises(ColorSpecError, match="gain must be a finite number, got nan"):
        ColorSpec(gain=float("nan"))


def test_spec_checks_expressions_early_and_names_the_field():
    with pytest.raises(ExpressionError) as info:
        ColorSpec(space="rgb", g="v + foo")
    assert str(info.value) == "bad expression: G: name 'foo' is not allowed (use v, pi or e)\n  v + foo\n      ^^^"


def test_slug_and_json():
    spec = ColorSpec()
    # Readable: the parameters that change pixels, no hash unless expressions need one.
    assert spec.slug() == "hsl-auto01"
    assert ColorSpec("White/Black", "Sigmoid", gain=1.5).slug() == "wb-sigmoid-g1.5-o0"
    assert ColorSpec("Red/Blue", "linear", clamp_min=-4, clamp_max=0.25).slug() == "rb-linear-min-4-max0.25"
    assert ColorSpec(auto_scope="block").slug() == "hsl-auto01-block"
    assert DIFF_COLOR.slug() == "bwr-autosym-block" and ColorSpec(space="rgb").slug() == "rgb-auto01"
    # Only fields that change pixels change the slug.
    assert ColorSpec(clamp_min=-2.0).slug() == spec.slug()
    assert ColorSpec(r="v").slug() == spec.slug()  # RGB fields are unused in HSL
    custom = ColorSpec(h="(2-2*v)/3").slug()
    assert custom.startswith("hsl-h-2-2-v-3-") and custom.endswith("-auto01") and custom != spec.slug()
    # Distinct colorizations, distinct names: numbers exactly, expressions by a hash of their text.
    specs = [ColorSpec("White/Black", "sigmoid", gain=g, offset=o) for g in (1.0, 1.0000001, 0.1, 10.0) for o in (0.0, -0.5)]
    specs += [ColorSpec(h=h) for h in ("(2-2*v)/3", "(2-2*v)/3 ", "(2+2*v)/3", "v*v")]
    specs += [ColorSpec(space="rgb", r="v", g="v", b="v"), ColorSpec(space="rgb", r="-v", g="v", b="v")]
    assert len({x.slug() for x in specs}) == len(specs)
    data = json.loads(spec.to_json())
    assert data["method"] == "Custom" and data["h"] == "(2+v)/3" and "_exprs" not in data
    assert ColorSpec.from_json(spec.to_json()) == spec
    assert ColorSpec.from_json({"method": "Red/Blue"}) == ColorSpec("Red/Blue")
    with pytest.raises(ColorSpecError, match=r"unknown colour spec fields \['colour'\]"):
        ColorSpec.from_json({"colour": "red"})


@pytest.mark.parametrize(
    "spec",
    [
        ColorSpec("White/Black", "Sigmoid", gain=3.0),
        ColorSpec("Red/Blue", "Linear"),
        ColorSpec("Custom", "Sigmoid", space="rgb", r="where(v > 0.1, 1, 0)"),
    ],
)
def test_float16_value_tables_equal_the_direct_kernels(spec):
    # float16 maps under a range-free transform go through a 65536-entry pixel table.
    x = np.random.default_rng(1).standard_normal((3, 5, 7)).astype(np.float16)
    x[0, 0, :4] = [np.nan, np.inf, -np.inf, 0.0]
    np.testing.assert_array_equal(colorize(x, spec), colorize(x.astype(np.float32), spec))

"""Interval bounds are sound, the HSL port is colorsys bit for bit, and tables equal the exact path."""

from __future__ import annotations

import colorsys

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dumpunet.analyzer.color.colorize import ColorSpec, colorize
from dumpunet.analyzer.color.expressions import evaluate, parse_expression
from dumpunet.analyzer.color.hls import hls_to_rgb, hls_to_rgb_bounds
from dumpunet.analyzer.color.bounds import bound
from dumpunet.analyzer.color.intervals import Interval
from dumpunet.analyzer.color.lut import build_lut, exact_pixels

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LEAVES = st.sampled_from(["v", "v", "v", "0", "1", "0.5", "2", "3", "-1", "0.25", "pi", "10", "1e-3", "0.3"])
UNARY = ["abs", "sqrt", "exp", "log", "log2", "log10", "sin", "cos", "tan", "tanh", "arctan", "floor", "ceil", "sign",
         "sigmoid", "-", "square", "round", "arcsin", "arccos", "sinh", "cosh"]
BINARY = ["+", "-", "*", "/", "**", "%", "//", "<", "<=", ">", ">=", "==", "!=", "and", "or"]


def _extend(inner):
    return st.one_of(
        st.tuples(st.sampled_from(UNARY), inner).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(inner, st.sampled_from(BINARY), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        st.tuples(st.sampled_from(["min", "max", "power", "fmod", "hypot"]), inner, inner).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]})"
        ),
        st.tuples(inner, st.sampled_from(["-2", "0", "1", "3"])).map(lambda t: f"round({t[0]}, {t[1]})"),
        st.tuples(st.sampled_from(["clip", "where"]), inner, inner, inner).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]}, {t[3]})"
        ),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]}) if ({t[1]}) else ({t[2]})"),
    )


EXPRESSIONS = st.recursive(LEAVES, _extend, max_leaves=7)
# Typical colour expressions: smooth, with kinks, with jumps.
TYPICAL = st.sampled_from([
    "abs(v)", "(2+v)/3", "(2-2*v)/3", "v*v", "sqrt(abs(v))", "0.5 + 0.5*sin(6*v)", "where(v > 0.2, 1, 0.3)",
    "floor(8*v)/8", "(3*v) % 1", "sigmoid(12*v)", "clip(4*v, 0, 1)", "1/(1+abs(v))", "exp(-4*v*v)", "v**3",
    "fmod(3*v, 1)", "(8*v) // 1 / 8", "round(v, 1)", "v if v > 0.5 else 1 - v", "v > 0.3 and 0.8 or 0.2",
    "hypot(v, 0.5)", "tanh(3*v)", "(v - 0.5) * 0.9 + 0.5 and arcsin(v)",
])


def _sample_points(lo, hi, rng, n):
    t = rng.uniform(lo, hi, n)
    t[: len(t) // 4] = np.round(t[: len(t) // 4] * 512) / 512  # pixel-level round numbers
    return np.concatenate([t, [lo, hi, 0.0, 0.5, np.nextafter(0.0, 1.0), np.nextafter(0.0, -1.0)]])


@SETTINGS
@given(text=st.one_of(EXPRESSIONS, TYPICAL), seed=st.integers(0, 2**32 - 1), wide=st.booleans())
@example(text="where(sqrt(v) * 0, 1, 0)", seed=1, wide=False)  # NaN condition: numpy takes it as true
@example(text="(v*0) ** -1", seed=2, wide=False)  # the sign of zero decides between inf and -inf
@example(text="(v - 0.5) % 0.25", seed=3, wide=True)
@example(text="1 / (v - 0.1) + v / (v + 1)", seed=4, wide=False)  # poles inside cells
@example(text="1 ** sqrt(v) + sqrt(v) ** 0", seed=5, wide=False)  # 1 ** NaN == NaN ** 0 == 1
@example(text="fmod(8*v - 3, 0.7) + fmod(v, -0.25)", seed=6, wide=True)  # fmod keeps the sign of x
@example(text="(5*v) // 0.3 + 1 // v", seed=7, wide=True)
@example(text="hypot(log(v), exp(1000*v))", seed=8, wide=True)  # hypot(inf, NaN) is inf
@example(text="(v - 0.5 and 2) + (v > 1 or v) + (1 if v < 0.3 else v)", seed=9, wide=False)
@example(text="arcsin(v) + arccos(v - 1) + round(7.3*v, 1) + square(v - 1)", seed=10, wide=False)
def test_bounds_contain_every_value_the_exact_path_computes(text, seed, wide):
    expr = parse_expression(text)
    rng = np.random.default_rng(seed)
    span = 8.0 if wide else 2.0
    a = rng.uniform(-span, span, 64)
    width = np.where(rng.random(64) < 0.5, 1e-4, 0.3) * rng.random(64)
    b = a + width
    iv = bound(expr, a, b)
    frac = np.concatenate([[0.0, 1.0], rng.random(30)])
    pts = a[:, None] + (b - a)[:, None] * frac[None, :]
    pts = np.minimum(pts, b[:, None])
    vals = evaluate(expr, pts)
    nan = np.isnan(vals)
    assert not (nan & ~iv.nan[:, None]).any(), "NaN where the bound said none"
    inside = (vals >= iv.lo[:, None]) & (vals <= iv.hi[:, None])
    assert (inside | nan).all(), f"value outside bound for {text!r}"


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_hls_bounds_contain_colorsys(seed):
    # H, S and L reach colorsys unclipped, as in the original: any float, the hue wraps.
    rng = np.random.default_rng(seed)
    n = 200
    lo = rng.random((3, n)) * np.where(rng.random((3, n)) < 0.3, 0.0, 1.0)
    hi = np.minimum(lo + rng.random((3, n)) * np.where(rng.random((3, n)) < 0.5, 1e-3, 0.5), 1.0)
    wide = rng.random((3, n)) < 0.4
    lo = np.where(wide, lo * 6 - 3, lo)
    hi = np.where(wide, np.maximum(hi * 6 - 3, lo), hi)
    lo[:, :5], hi[:, :5] = 0.5, 0.5  # l == 0.5 exactly is colorsys's branch point
    lo[2, 5:10], hi[2, 5:10] = 0.0, 0.0  # s == 0 returns (l, l, l) ...
    lo[1, 5:10] = hi[1, 5:10] = [1e308, -1e308, np.inf, -np.inf, 3.0]  # ... also where 2*l overflows
    lo[0, 10:12], hi[0, 10:12] = [-np.inf, 1e300], [np.inf, 1e300]
    nan = rng.random((3, n)) < 0.1
    h, l, s = (Interval(lo[i], hi[i], nan[i]) for i in range(3))
    bounds = hls_to_rgb_bounds(h, l, s)
    frac = rng.random((3, n, 8))
    with np.errstate(invalid="ignore"):
        pts = np.where((lo == hi)[..., None], lo[..., None], lo[..., None] + (hi - lo)[..., None] * frac)
    pts[0, 10] = [-np.inf, np.inf, -1e300, -2.75, 0.0, 0.5, 7.25, 1e300]
    pts = np.where(nan[..., None] & (rng.random((3, n, 8)) < 0.3), np.nan, pts)
    for k in range(8):
        rgb = [colorsys.hls_to_rgb(*(float(pts[i, j, k]) for i in (0, 1, 2))) for j in range(n)]
        for c in range(3):
            x = np.array([p[c] for p in rgb])
            ok = np.isnan(x) & bounds[c].nan | ((x >= bounds[c].lo) & (x <= bounds[c].hi))
            assert ok.all()


@SETTINGS
@given(h=st.floats(allow_nan=True), l=st.floats(-0.5, 1.5), s=st.floats(-0.5, 1.5))
@example(h=0.1, l=0.5, s=0.3)  # colorsys's branch point l <= 0.5
@example(h=0.1, l=0.5, s=0.7)
@example(h=0.1, l=0.7, s=0.0)
def test_numpy_hls_port_is_colorsys_bit_for_bit(h, l, s):
    expected = colorsys.hls_to_rgb(h, l, s)
    got = hls_to_rgb(np.array([h]), np.array([l]), np.array([s]))
    np.testing.assert_array_equal(np.array([c[0] for c in got]), np.array(expected))


def _lookup_identity(t, spec):
    """Colorize t itself through the table (auto01 over (0, 1) is the identity on [0, 1])."""
    maps = np.ascontiguousarray(t, dtype=np.float64).reshape(1, 1, -1)
    return colorize(maps, spec, minmax=(0.0, 1.0))[0, 0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.tuples(st.one_of(EXPRESSIONS, TYPICAL), TYPICAL, st.one_of(EXPRESSIONS, TYPICAL)),
       space=st.sampled_from(["rgb", "hsl"]), seed=st.integers(0, 2**32 - 1))
def test_table_pixels_equal_the_exact_path(texts, space, seed):
    names = ("r", "g", "b") if space == "rgb" else ("h", "s", "l")
    spec = ColorSpec("Custom", "auto01", space=space, **dict(zip(names, texts, strict=True)))
    lut = build_lut(space, texts, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    thr = lut.limits[:-1][np.isfinite(lut.limits[:-1, 0])].ravel()
    near = np.concatenate([thr, np.nextafter(thr, -1), np.nextafter(thr, 2)]) if thr.size else np.empty(0)
    picked = rng.choice(near, min(near.size, 2000)) if near.size else []
    t = np.concatenate([_sample_points(0.0, 1.0, rng, 4000), picked])
    t = t[(t >= 0) & (t <= 1)]
    t = np.concatenate([t, [np.nan, 1.5, -3.0]])  # the NaN row; out-of-range values are clamped
    got = colorize(t.reshape(1, 1, -1), spec, minmax=(0.0, 1.0))[0, 0]
    expected = exact_pixels(np.clip(t, 0.0, 1.0), spec.expressions, space)
    np.testing.assert_array_equal(got, expected)


def test_default_tables_need_no_exact_path():
    for lo in (0.0, -1.0):
        counts = build_lut("hsl", ("(2+v)/3", "1.0", "0.5"), lo, 1.0).counts()
        assert counts["exact_path"] == 0 and counts["one"] > 0.9 * sum(counts.values())


def test_constant_maps_outside_the_table_take_the_exact_path():
    # A constant map passes through unchanged: v = 5 lies outside the table's [0, 1].
    spec = ColorSpec("Custom", "auto01", space="rgb", r="v/10", g="0.25", b="where(v > 4, 1, 0)")
    got = colorize(np.full((2, 1, 3), 5.0, np.float32), spec)
    assert (got == [128, 64, 255]).all()


def test_bounds_see_nan_and_extremes_inside_a_cell():
    # 0 * inf happens at v = 0.75 only, inside the cell, at no corner of the interval product.
    iv = bound(parse_expression("(v - 0.75) * exp(1000*v)"), np.array([0.7]), np.array([0.8]))
    assert iv.nan[0]
    # sin peaks at pi/2 inside the cell, tan has a pole inside the second cell.
    iv = bound(parse_expression("sin(v)"), np.array([1.5]), np.array([1.6]))
    assert iv.hi[0] == 1.0
    iv = bound(parse_expression("tan(v)"), np.array([1.5, 1.0]), np.array([1.6, 1.1]))
    assert np.isinf(iv.hi[0]) and iv.nan[0] and iv.hi[1] < 2.0

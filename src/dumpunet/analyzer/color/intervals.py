"""Interval arithmetic for sound bounds of a colour expression over many small ranges of ``v`` at once.

:mod:`dumpunet.analyzer.color.lut` needs to *prove* that every float ``v`` in a cell ``[a, b]`` gives
the same pixel, so that a lookup table can stand in for :func:`expressions.evaluate` exactly.
:func:`~dumpunet.analyzer.color.bounds.bound` walks the expression tree with interval arithmetic on numpy arrays (one entry per
cell) and returns, per cell, bounds ``[lo, hi]`` on every non-NaN value the *float64 numpy
evaluation* can produce for ``v`` in the cell, and whether NaN is possible.

Why plain float endpoint arithmetic is sound here: IEEE ``+ - * / sqrt`` are correctly rounded and
rounding is monotone, so for a monotone operation ``fl(f(a)) <= fl(f(x)) <= fl(f(b))`` holds for
the very floats the exact path computes. Library functions (exp, log, sin, ``**``, ...) are only
accurate to a few ulp, not monotone, so their bounds are widened by ``WIDEN`` (~45 ulp), far
more than numpy's documented error (at most 4 ulp). Whatever cannot be bounded tightly (a pole
inside the cell, ``inf - inf``, a NaN exponent) gives up: ``[-inf, inf]`` plus NaN, which only
sends that cell to the exact path.

An interval is empty (``lo > hi``, stored as ``[inf, -inf]``) when every value is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


__all__ = ["Interval"]

# Relative widening of library-function results: 1e-14 is about 45 ulp.
WIDEN = 1e-14
_INF = np.inf


@dataclass
class Interval:
    """Per-cell bounds ``lo <= x <= hi`` of the non-NaN values, and whether NaN can occur."""

    lo: np.ndarray
    hi: np.ndarray
    nan: np.ndarray

    @property
    def empty(self) -> np.ndarray:
        return self.lo > self.hi

    @classmethod
    def point(cls, value: float, n: int) -> Interval:
        if np.isnan(value):
            return cls(np.full(n, _INF), np.full(n, -_INF), np.ones(n, bool))
        return cls(np.full(n, value, dtype=np.float64), np.full(n, value, dtype=np.float64), np.zeros(n, bool))

    def union(self, other: Interval) -> Interval:
        # Empty intervals are [inf, -inf], so min/max ignore them.
        return Interval(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi), self.nan | other.nan)

    def restrict(self, mask: np.ndarray) -> Interval:
        """Keep the cells in ``mask``; make the others empty without NaN (for branch unions)."""
        return Interval(np.where(mask, self.lo, _INF), np.where(mask, self.hi, -_INF), self.nan & mask)


def _settle(lo, hi, nan, giveup, *operands: Interval) -> Interval:
    """Finish a result: NaN endpoints or ``giveup`` widen to everything; NaN operands stay NaN."""
    giveup = giveup | np.isnan(lo) | np.isnan(hi)
    empty = np.zeros(lo.shape, bool)
    for op in operands:
        nan = nan | op.nan
        empty |= op.empty
    lo = np.where(giveup, -_INF, lo)
    hi = np.where(giveup, _INF, hi)
    nan = nan | giveup | empty
    return Interval(np.where(empty, _INF, lo), np.where(empty, -_INF, hi), nan)


def _widen(x: Interval) -> Interval:
    lo = np.where(np.isfinite(x.lo), x.lo - np.abs(x.lo) * WIDEN - 1e-300, x.lo)
    hi = np.where(np.isfinite(x.hi), x.hi + np.abs(x.hi) * WIDEN + 1e-300, x.hi)
    return Interval(lo, hi, x.nan)


def _corners(f, a: Interval, b: Interval, extra_nan=False) -> Interval:
    """Bounds of ``f(x, y)`` for ``f`` monotone in each argument: the extremes sit at corners."""
    c = np.stack([f(a.lo, b.lo), f(a.lo, b.hi), f(a.hi, b.lo), f(a.hi, b.hi)])
    bad = np.isnan(c).any(axis=0)
    return _settle(c.min(axis=0), c.max(axis=0), np.asarray(extra_nan), bad, a, b)


def _contains_zero(x: Interval) -> np.ndarray:
    return (x.lo <= 0) & (x.hi >= 0)


def _has_inf(x: Interval) -> np.ndarray:
    return np.isinf(x.lo) | np.isinf(x.hi)


def _is_point(x: Interval) -> np.ndarray:
    return (x.lo == x.hi) & ~x.nan


def _add(a, b):
    return _corners(np.add, a, b)


def _sub(a, b):
    return _corners(np.subtract, a, b)


def _mul(a, b):
    # 0 * inf is NaN and may sit inside the box, not at a corner.
    extra = (_contains_zero(a) & _has_inf(b)) | (_contains_zero(b) & _has_inf(a))
    return _corners(np.multiply, a, b, extra)


def _div(a, b):
    r = _corners(np.true_divide, a, b)
    return _settle(r.lo, r.hi, r.nan, _contains_zero(b), a, b)


def _pow(a, b):
    """Bound ``np.power``, by the sign of the base and the kind of exponent.

    For x >= 0, x ** y is monotone in each argument: the corners bound it. A negative base
    gives NaN unless the exponent is an integer; with an integer point exponent x ** n is
    monotone on each side of 0, so x = lo, hi and 0 bound it.
    """
    y = b.lo
    point = _is_point(b) & np.isfinite(y)
    integer = point & (np.floor(y) == y)
    zero = _contains_zero(a)
    neg = a.lo < 0
    # The non-negative part of the base (all of it when a.lo >= 0).
    base_lo = np.where(neg, 0.0, a.lo)
    no_base = base_lo > a.hi
    c = np.stack([np.power(base_lo, b.lo), np.power(base_lo, b.hi), np.power(a.hi, b.lo), np.power(a.hi, b.hi)])
    lo, hi = c.min(axis=0), c.max(axis=0)
    giveup = ~neg & np.isnan(c).any(axis=0)
    # A zero base with a negative exponent is +-inf depending on the sign of that zero (for an
    # odd exponent), which intervals do not see.
    giveup |= ~neg & zero & (b.lo < 0)
    # Negative base, non-integer point exponent: NaN, plus the non-negative part if any.
    frac = neg & point & ~integer
    giveup |= frac & ~no_base & np.isnan(c).any(axis=0)
    # Negative base, integer point exponent.
    cand = np.stack([np.power(a.lo, y), np.power(a.hi, y), np.where(zero, np.power(0.0, y), np.power(a.lo, y))])
    use_int = neg & integer
    lo = np.where(use_int, cand.min(axis=0), lo)
    hi = np.where(use_int, cand.max(axis=0), hi)
    giveup |= use_int & (np.isnan(cand).any(axis=0) | (zero & (y < 0)))
    # Negative base with an exponent that is not a known point: anything.
    giveup |= neg & ~point
    # NaN ** 0 == 1 and 1 ** NaN == 1: with NaN operands anything goes.
    giveup |= a.nan | b.nan | a.empty | b.empty
    all_nan = frac & no_base & ~giveup
    lo = np.where(all_nan, _INF, lo)
    hi = np.where(all_nan, -_INF, hi)
    # No operands passed on: an always-NaN operand must not make the result always NaN here.
    return _widen(_settle(lo, hi, frac, giveup))


def _mod_pieces(a: Interval, m: Interval) -> tuple[Interval, Interval]:
    """Bound ``np.remainder(x, m)`` as the union of two intervals (the second often empty).

    For a point ``m > 0``, ``np.remainder(x, m)`` is ``fl(x - floor(x/m)*m)``: monotone within
    one period. When ``fl(b - a) < m/2``, ``[a, b]`` spans at most one period boundary, and
    ``rem(a) <= rem(b)`` holds exactly when it spans none. Spanning one boundary gives
    ``[rem(a), m]`` (the rounding can reach m) and ``[0, rem(b)]``.
    """
    ok = _is_point(m) & (m.lo > 0) & np.isfinite(m.lo) & np.isfinite(a.lo) & np.isfinite(a.hi)
    mm = np.where(ok, m.lo, 1.0)
    ra, rb = np.remainder(a.lo, mm), np.remainder(a.hi, mm)
    short = ok & (np.subtract(a.hi, a.lo) < mm / 2)
    same = short & (ra <= rb)
    cross = short & (ra > rb)
    first = _settle(np.where(same | cross, ra, 0.0), np.where(same, rb, mm), np.zeros(ok.shape, bool), ~ok, a, m)
    second = _settle(np.zeros(ok.shape), rb, np.zeros(ok.shape, bool), np.zeros(ok.shape, bool), a, m)
    return first, second.restrict(cross)


def _mod(a, m):
    first, second = _mod_pieces(a, m)
    return first.union(second)


def _fmod_up(lo, hi, m):
    """Bounds of ``np.fmod(x, m)`` for ``0 <= lo <= x <= hi`` and m > 0: fmod is exact, so it is
    monotone within a period, and ``hi - lo < m`` with ``fmod(lo) <= fmod(hi)`` means one period."""
    r_lo, r_hi = np.fmod(lo, m), np.fmod(hi, m)
    same = (np.subtract(hi, lo) < m) & (r_lo <= r_hi)
    return np.where(same, r_lo, 0.0), np.where(same, r_hi, m)


def _fmod(a, m):
    """Bound ``np.fmod(x, m)`` (the sign of x, ``x - trunc(x/m)*m``) for a finite point ``m != 0``;
    negative x mirror positive ones: ``fmod(x, m) == -fmod(-x, |m|)``."""
    ok = _is_point(m) & np.isfinite(m.lo) & (m.lo != 0) & np.isfinite(a.lo) & np.isfinite(a.hi)
    mm = np.where(ok, np.abs(m.lo), 1.0)
    lo, hi = np.where(ok, a.lo, 0.0), np.where(ok, a.hi, 0.0)
    up_lo, up_hi = _fmod_up(np.maximum(lo, 0.0), np.maximum(hi, 0.0), mm)
    dn_lo, dn_hi = _fmod_up(np.maximum(-hi, 0.0), np.maximum(-lo, 0.0), mm)
    up = Interval(up_lo, up_hi, np.zeros(ok.shape, bool)).restrict(hi >= 0)
    down = Interval(-dn_hi, -dn_lo, np.zeros(ok.shape, bool)).restrict(lo < 0)
    r = up.union(down)
    return _settle(r.lo, r.hi, r.nan, ~ok, a, m)


def _floordiv(a, b):
    """Bound ``np.floor_divide``: below 2**40 it is the exact floor of the exact quotient, which
    is monotone in each argument away from a zero divisor, so the corners bound it."""
    r = _corners(np.floor_divide, a, b)
    q = _corners(np.true_divide, a, b)
    giveup = _contains_zero(b) | ~(np.maximum(np.abs(q.lo), np.abs(q.hi)) < 2.0**40)
    return _settle(r.lo, r.hi, r.nan, giveup, a, b)


def _hypot(a, b):
    """Bound ``np.hypot``: increasing in |x| and |y|; ``hypot(inf, NaN)`` is inf, so NaN gives up."""
    r = _corners(np.hypot, _abs(a), _abs(b))
    giveup = a.nan | b.nan | a.empty | b.empty
    return _widen(_settle(r.lo, r.hi, r.nan, giveup))


def _neg(a):
    return Interval(-a.hi, -a.lo, a.nan)


def _abs(a):
    lo = np.where(a.lo >= 0, a.lo, np.where(a.hi <= 0, -a.hi, 0.0))
    hi = np.maximum(np.abs(a.lo), np.abs(a.hi))
    return Interval(np.where(a.empty, _INF, lo), np.where(a.empty, -_INF, hi), a.nan)


def _monotone(
    f, a: Interval, *, domain_lo: float | None = None, domain_hi: float | None = None, exact: bool = False
) -> Interval:
    """Bounds of an increasing ``f``; values outside ``[domain_lo, domain_hi]`` give NaN (sqrt, log)."""
    lo, hi, nan = a.lo, a.hi, a.nan
    if domain_lo is not None:
        nan = nan | (lo < domain_lo)
        lo = np.maximum(lo, domain_lo)
    if domain_hi is not None:
        nan = nan | (hi > domain_hi)
        hi = np.minimum(hi, domain_hi)
    empty = a.empty | (lo > hi)
    f_lo = np.where(empty, _INF, f(np.where(empty, 0.0, lo)))
    f_hi = np.where(empty, -_INF, f(np.where(empty, 0.0, hi)))
    r = Interval(f_lo, f_hi, nan | empty)
    return r if exact else _widen(r)


def _periodic(f, a: Interval, peak: float, trough: float, period: float) -> Interval:
    """Bounds of sin/cos: the endpoints, or +-1 where a peak/trough may lie inside (with slack)."""

    def contains(c):
        k_lo = np.ceil((a.lo - c) / period - 1e-9)
        k_hi = np.floor((a.hi - c) / period + 1e-9)
        return k_hi >= k_lo

    big = ~(np.abs(a.lo) < 1e6) | ~(np.abs(a.hi) < 1e6) | (a.hi - a.lo >= period)
    fl, fh = f(np.where(big, 0.0, a.lo)), f(np.where(big, 0.0, a.hi))
    w = _widen(Interval(np.minimum(fl, fh), np.maximum(fl, fh), a.nan))
    lo = np.where(contains(trough) | big, -1.0, w.lo)
    hi = np.where(contains(peak) | big, 1.0, w.hi)
    nan = a.nan | ~np.isfinite(a.lo) | ~np.isfinite(a.hi)
    return _settle(lo, hi, nan, np.zeros(lo.shape, bool), a)


def _tan(a):
    k_lo = np.ceil((a.lo - np.pi / 2) / np.pi - 1e-9)
    k_hi = np.floor((a.hi - np.pi / 2) / np.pi + 1e-9)
    giveup = (k_hi >= k_lo) | ~(np.abs(a.lo) < 1e6) | ~(np.abs(a.hi) < 1e6)
    w = _widen(Interval(np.tan(np.where(giveup, 0.0, a.lo)), np.tan(np.where(giveup, 0.0, a.hi)), a.nan))
    return _settle(w.lo, w.hi, w.nan, giveup, a)


def _minmax(f, a, b):
    return _settle(f(a.lo, b.lo), f(a.hi, b.hi), np.zeros(a.lo.shape, bool), np.zeros(a.lo.shape, bool), a, b)


def _sigmoid(a):
    n = a.lo.shape[0]
    one = Interval.point(1.0, n)
    return _div(one, _add(one, _monotone(np.exp, _neg(a))))


def _where(c, a, b):
    # numpy's where(c, a, b) takes a where c != 0; NaN counts as true.
    surely_true = (c.lo > 0) | (c.hi < 0) | c.empty
    surely_false = (c.lo == 0) & (c.hi == 0) & ~c.nan
    return a.restrict(~surely_false).union(b.restrict(~surely_true))

"""HSL as the original converted it: :func:`colorsys.hls_to_rgb` on arrays, and its interval bounds.

H, L and S reach the conversion unclipped, as in the original: the hue wraps around
(``h mod 1``) and S, L outside [0, 1] give channels outside [0, 1], which only the pixel rule
clips. :func:`hls_to_rgb` repeats colorsys operation for operation, so it is bit for bit the
same; :func:`hls_to_rgb_bounds` bounds it over intervals for :mod:`dumpunet.analyzer.color.lut`.
"""

from __future__ import annotations

import numpy as np

from dumpunet.analyzer.color.intervals import _INF, Interval, _add, _contains_zero, _mod_pieces, _mul, _sub

__all__ = ["hls_to_rgb", "hls_to_rgb_bounds"]

# colorsys's constants, bit for bit.
ONE_THIRD = 1.0 / 3.0
ONE_SIXTH = 1.0 / 6.0
TWO_THIRD = 2.0 / 3.0


def _v(m1, m2, hue):
    hue = np.remainder(hue, 1.0)
    return np.where(
        hue < ONE_SIXTH,
        m1 + (m2 - m1) * hue * 6.0,
        np.where(hue < 0.5, m2, np.where(hue < TWO_THIRD, m1 + (m2 - m1) * (TWO_THIRD - hue) * 6.0, m1)),
    )


def hls_to_rgb(h: np.ndarray, l: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`colorsys.hls_to_rgb` on arrays, operation for operation, so bit for bit.

    >>> [float(c) for c in hls_to_rgb(np.array(2/3), np.array(0.5), np.array(1.0))]
    [0.0, 0.0, 1.0]
    """
    with np.errstate(all="ignore"):
        m2 = np.where(l <= 0.5, l * (1.0 + s), l + s - (l * s))
        m1 = 2.0 * l - m2
        rgb = (_v(m1, m2, h + ONE_THIRD), _v(m1, m2, h), _v(m1, m2, h - ONE_THIRD))
        gray = s == 0.0
        return tuple(np.where(gray, l, c) for c in rgb)  # type: ignore[return-value]


def _hue_bounds(m1: Interval, m2: Interval, hue: Interval) -> Interval:
    """Bound colorsys's ``_v(m1, m2, hue)`` (hue already reduced modulo 1)."""
    n = hue.lo.shape[0]
    six = Interval.point(6.0, n)
    d = _sub(m2, m1)
    # hue < 1/6: m1 + (m2-m1)*hue*6
    b1 = (hue.lo < ONE_SIXTH) & ~hue.empty
    h1 = Interval(hue.lo, np.minimum(hue.hi, np.nextafter(ONE_SIXTH, 0.0)), np.zeros(n, bool))
    r1 = _add(m1, _mul(_mul(d, h1), six))
    # 1/6 <= hue < 1/2: m2
    b2 = (hue.hi >= ONE_SIXTH) & (hue.lo < 0.5) & ~hue.empty
    # 1/2 <= hue < 2/3: m1 + (m2-m1)*(2/3-hue)*6
    b3 = (hue.hi >= 0.5) & (hue.lo < TWO_THIRD) & ~hue.empty
    h3 = Interval(np.maximum(hue.lo, 0.5), np.minimum(hue.hi, np.nextafter(TWO_THIRD, 0.0)), np.zeros(n, bool))
    r3 = _add(m1, _mul(_mul(d, _sub(Interval.point(TWO_THIRD, n), h3)), six))
    # hue >= 2/3, or NaN: m1
    b4 = ((hue.hi >= TWO_THIRD) & ~hue.empty) | hue.nan
    out = r1.restrict(b1).union(m2.restrict(b2)).union(r3.restrict(b3)).union(m1.restrict(b4))
    out.nan |= m1.nan | m2.nan
    return out


def hls_to_rgb_bounds(h: Interval, l: Interval, s: Interval) -> tuple[Interval, Interval, Interval]:
    """Bound :func:`colorsys.hls_to_rgb` (argument order H, L, S) for any h, l, s, NaN included."""
    n = h.lo.shape[0]
    with np.errstate(all="ignore"):
        one, two, unit = Interval.point(1.0, n), Interval.point(2.0, n), Interval.point(1.0, n)
        # s == 0 returns (l, l, l): for moderate l the general formula gives exactly l too, but
        # not where 2*l overflows or l is infinite, so that branch is joined in below.
        low = l.lo <= 0.5
        high = l.hi > 0.5
        l_low = Interval(l.lo, np.minimum(l.hi, 0.5), l.nan).restrict(low)
        l_high = Interval(np.maximum(l.lo, np.nextafter(0.5, 1.0)), l.hi, l.nan).restrict(high)
        m2 = _mul(l_low, _add(one, s)).restrict(low).union(_sub(_add(l_high, s), _mul(l_high, s)).restrict(high))
        m2.nan |= l.nan | s.nan
        empty = l.empty | s.empty
        m2 = Interval(np.where(empty, _INF, m2.lo), np.where(empty, -_INF, m2.hi), m2.nan | empty)
        m1 = _sub(_mul(two, l), m2)
        rgb = []
        for shift in (ONE_THIRD, 0.0, -ONE_THIRD):
            first, second = _mod_pieces(_add(h, Interval.point(shift, n)) if shift else h, unit)
            rgb.append(_hue_bounds(m1, m2, first).union(_hue_bounds(m1, m2, second)))
        gray = _contains_zero(s) & ~s.empty
        return tuple(c.union(l.restrict(gray)) for c in rgb)  # type: ignore[return-value]

"""Exact lookup tables for Custom colour expressions, and the exact path they stand in for.

The value transforms bound ``v`` to a known domain ([0, 1] for Auto [0,1], [-1, 1] otherwise),
so the pixel of a Custom colorization is a function of one float in that domain. The domain is
cut into ``cells`` equal cells; for each cell, interval arithmetic
(:mod:`dumpunet.analyzer.color.intervals`) tries to *prove* that every float in it gives one pixel.
A cell where the pixel changes is bisected (with the exact path) down to the two adjacent
floats where it changes, and both sides are proven again, so one threshold per cell settles
it; where bounds are loose, the sides are proven in pieces and a small gap around the
threshold is left out. What remains unproven (several changes in one cell, the gaps, cells
that may give NaN, values outside the domain such as constant maps passed through) goes to
:func:`exact_pixels`, the numpy evaluation. The table never approximates: a pixel from it
equals the one :func:`exact_pixels` gives for the same ``v``.

Per cell ``k`` the table holds two colours A and B and two limits ``t1 < t2``: values
``v <= t1`` take A, ``v >= t2`` take B, values in between (an empty or narrow gap) are
unproven. A last row holds the colour of ``v = NaN``; see :class:`CustomLut`.

For the default HSL expressions every cell is proven (1020 of 32768 split at a threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dumpunet.analyzer.color.expressions import Expression, evaluate, parse_expression
from dumpunet.analyzer.color.hls import hls_to_rgb, hls_to_rgb_bounds
from dumpunet.analyzer.color.bounds import bound

__all__ = ["CELLS", "CustomLut", "build_lut", "exact_pixels", "quantize"]

CELLS = 1 << 15
# Cells are widened by this much so that rounding in the kernel's cell index cannot leave a
# value outside the range that was proven for its cell.
_MARGIN = 1e-12
# Gaps tried around a threshold, as fractions of a cell: 0 (adjacent floats) suffices when the
# expression uses only + - * / sqrt; library functions need room for their widened bounds, and
# overestimated bounds (a variable used twice, as HSL's m1 and m2 are) need more. Values in a
# gap take the exact path.
_GAPS = (0.0, 2.0**-40, 2.0**-30, 2.0**-20, 2.0**-10, 2.0**-6, 2.0**-4)
# Unproven ranges are tried again as this many pieces: bounds of a short range overestimate less.
_PIECES = 8


def quantize(x: np.ndarray) -> np.ndarray:
    """Return ``clip(x*256, 0, 255)`` truncated to uint8, NaN as 0 (the original's pixel rule)."""
    with np.errstate(over="ignore"):  # unclipped channels may be huge; they clip to 255
        y = np.clip(np.asarray(x, dtype=np.float64) * 256.0, 0.0, 255.0)
    return np.where(np.isnan(y), 0.0, y).astype(np.uint8)


def exact_channels(t: np.ndarray, exprs: tuple[Expression, Expression, Expression], space: str) -> np.ndarray:
    """Evaluate the three expressions at ``t`` (and convert HSL); float64 [..., 3], not clipped.

    As in the original, H, S and L go to colorsys as they are: the hue wraps around (h mod 1)
    and S, L outside [0, 1] give RGB outside [0, 1], which only the pixel rule clips.
    """
    a, b, c = (evaluate(e, t) for e in exprs)
    if space == "hsl":
        a, b, c = hls_to_rgb(a, c, b)  # exprs are (H, S, L); colorsys wants (h, l, s)
    return np.stack([a, b, c], axis=-1)


def exact_pixels(t: np.ndarray, exprs: tuple[Expression, Expression, Expression], space: str) -> np.ndarray:
    """The exact Custom colorization of transformed values ``t``: uint8 [..., 3]."""
    return quantize(exact_channels(np.asarray(t, dtype=np.float64), exprs, space))


def _proven_pixels(lo, hi, exprs, space) -> tuple[np.ndarray, np.ndarray]:
    """For each range [lo[i], hi[i]]: (proven, pixel uint8 [n, 3]) where proven means one pixel."""
    chans = [bound(e, lo, hi) for e in exprs]
    if space == "hsl":
        h, s, l = chans
        chans = list(hls_to_rgb_bounds(h, l, s))
    proven = np.ones(lo.shape, bool)
    pixel = np.zeros(lo.shape + (3,), np.uint8)
    for i, c in enumerate(chans):
        empty = c.empty
        q_lo, q_hi = quantize(np.where(empty, 0.0, c.lo)), quantize(np.where(empty, 0.0, c.hi))
        one = ~empty & (q_lo == q_hi) & (~c.nan | (q_lo == 0))
        proven &= one | (empty & c.nan)
        pixel[:, i] = np.where(empty, 0, q_lo)
    return proven, pixel


def _proven_in_pieces(lo, hi, exprs, space, pieces=_PIECES) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_proven_pixels`, proving each range as ``pieces`` parts of one common pixel."""
    n = lo.shape[0]
    edges = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, pieces + 1)[None, :]
    edges[:, 0], edges[:, -1] = lo, hi  # consecutive parts share ends, so they cover [lo, hi]
    ok, pixel = _proven_pixels(edges[:, :-1].ravel(), edges[:, 1:].ravel(), exprs, space)
    ok, pixel = ok.reshape(n, pieces), pixel.reshape(n, pieces, 3)
    return ok.all(axis=1) & (pixel == pixel[:, :1]).all(axis=(1, 2)), pixel[:, 0]


def _key(x: np.ndarray) -> np.ndarray:
    """Map float64 to int64 so that the order of floats is the order of integers."""
    i = x.view(np.int64)
    return np.where(i >= 0, i, np.int64(-(2**63)) - i)


def _unkey(k: np.ndarray) -> np.ndarray:
    return np.where(k >= 0, k, np.int64(-(2**63)) - k).view(np.float64)


def _pack(p: np.ndarray) -> np.ndarray:
    return (p[..., 0].astype(np.int32) << 16) | (p[..., 1].astype(np.int32) << 8) | p[..., 2]


@dataclass(frozen=True)
class CustomLut:
    """A proven table over ``[lo, hi]`` in the layout :func:`kernels.colorize_lut` reads.

    ``limits[k] = (t1, t2)``: every v of cell k with ``v <= t1`` has colour ``colors[2k]``,
    every v with ``v >= t2`` colour ``colors[2k+1]`` (packed ``r | g << 8 | b << 16``).
    ``t1 = inf`` marks a cell of one colour; ``(-inf, inf)`` a cell left to the exact path.
    The last row is the colour of NaN.
    """

    limits: np.ndarray
    colors: np.ndarray
    lo: float
    hi: float

    @property
    def cells(self) -> int:
        return self.limits.shape[0] - 1

    @property
    def scale(self) -> float:
        return self.cells / (self.hi - self.lo)

    def counts(self) -> dict[str, int]:
        """How many cells have one colour, a proven split, or go to the exact path."""
        t1 = self.limits[:-1, 0]
        one = int(np.sum(t1 == np.inf))
        exact = int(np.sum(t1 == -np.inf))
        return {"one": one, "split": self.cells - one - exact, "exact_path": exact}


def _split_cells(a, b, pa, exprs, space, width):
    """Bisect cells [a, b] (pixel pa at a, another at b) and prove both sides of the change."""
    lo_k, hi_k = _key(a), _key(b)
    for _ in range(70):
        live = hi_k - lo_k > 1
        if not live.any():
            break
        mid = lo_k + (hi_k - lo_k) // 2
        same = _pack(exact_pixels(_unkey(mid), exprs, space)) == pa
        lo_k = np.where(live & same, mid, lo_k)
        hi_k = np.where(live & ~same, mid, hi_k)
    t_star = _unkey(hi_k)
    before = np.nextafter(t_star, -np.inf)
    done = np.zeros(a.shape, bool)
    t1, t2 = np.full(a.shape, np.nan), np.full(a.shape, np.nan)
    px_a, px_b = np.zeros(a.shape + (3,), np.uint8), np.zeros(a.shape + (3,), np.uint8)
    for gap in _GAPS:
        todo = ~done
        if not todo.any():
            break
        g = gap * width
        c1, c2 = before[todo] - g, t_star[todo] + g
        ok_a, pix_a = _proven_in_pieces(a[todo], np.maximum(c1, a[todo]), exprs, space)
        ok_b, pix_b = _proven_in_pieces(np.minimum(c2, b[todo]), b[todo], exprs, space)
        ok = ok_a & ok_b & (c1 >= a[todo]) & (c2 <= b[todo])
        idx = np.flatnonzero(todo)[ok]
        done[idx] = True
        t1[idx], t2[idx] = c1[ok], c2[ok]
        px_a[idx], px_b[idx] = pix_a[ok], pix_b[ok]
    return done, t1, t2, px_a, px_b


def _packed(p: np.ndarray) -> np.ndarray:
    return p[..., 0].astype(np.uint32) | (p[..., 1].astype(np.uint32) << 8) | (p[..., 2].astype(np.uint32) << 16)


def _build(exprs: tuple[Expression, Expression, Expression], space: str, lo: float, hi: float, cells: int) -> CustomLut:
    width = (hi - lo) / cells
    edges = lo + np.arange(cells + 1, dtype=np.float64) * width
    # The kernel sends only lo <= v <= hi to the table: the end cells need no margin outside.
    a = np.maximum(edges[:-1] - _MARGIN, lo)
    b = np.minimum(edges[1:] + _MARGIN, hi)
    proven, pixel = _proven_pixels(a, b, exprs, space)
    limits = np.empty((cells + 1, 2), np.float64)
    limits[:, 0] = np.inf  # one colour: every v <= inf takes A ...
    limits[:, 1] = np.inf  # ... and no v >= inf takes B
    colors = np.zeros(2 * (cells + 1), np.uint32)
    colors[0:-2:2] = _packed(pixel)
    limits[:-1][~proven] = (-np.inf, np.inf)

    todo = np.flatnonzero(~proven)
    if todo.size:
        pa = _pack(exact_pixels(a[todo], exprs, space))
        pb = _pack(exact_pixels(b[todo], exprs, space))
        same = todo[pa == pb]
        if same.size:  # perhaps one colour after all, the bounds were too loose
            ok, pix = _proven_in_pieces(a[same], b[same], exprs, space)
            k = same[ok]
            limits[k] = np.inf
            colors[2 * k] = _packed(pix[ok])
        changes = todo[pa != pb]
        if changes.size:
            done, t1, t2, px_a, px_b = _split_cells(a[changes], b[changes], pa[pa != pb], exprs, space, width)
            k = changes[done]
            limits[k, 0], limits[k, 1] = t1[done], t2[done]
            colors[2 * k], colors[2 * k + 1] = _packed(px_a[done]), _packed(px_b[done])
    colors[-2] = _packed(exact_pixels(np.array([np.nan]), exprs, space)[0])
    limits.setflags(write=False)
    colors.setflags(write=False)
    return CustomLut(limits, colors, lo, hi)


@lru_cache(maxsize=16)
def build_lut(space: str, texts: tuple[str, str, str], lo: float, hi: float, cells: int = CELLS) -> CustomLut:
    """Build (once per arguments) the proven table of ``texts`` (R,G,B or H,S,L) over [lo, hi].

    ``hi - lo`` and ``cells`` must be powers of two, so that cell edges are exact floats.

    >>> lut = build_lut("hsl", ("(2+v)/3", "1.0", "0.5"), 0.0, 1.0)
    >>> lut.counts()["exact_path"]
    0
    """
    if cells & (cells - 1) or np.frexp(hi - lo)[0] != 0.5:
        raise ValueError(f"cells ({cells}) and hi - lo ({hi - lo}) must be powers of two")
    exprs = tuple(parse_expression(t) for t in texts)
    return _build(exprs, space, lo, hi, cells)  # type: ignore[arg-type]

"""Turn feature maps into pixels, as the original web-UI extension's "Colorization" options did.

Let ``v`` be a feature value. A :class:`ColorSpec` picks a *method* and a value *transform*:

===========  ==========  ====================================================================
method       transform   pixel
===========  ==========  ====================================================================
White/Black  Linear      gray ``(|clamp(v)| - X) / (Y - X)``; ``Y = max(|min|, |max|)``, ``X = 0``
                         if clamp min and max differ in sign, else ``min(|min|, |max|)``
White/Black  Sigmoid     gray ``|sigmoid(gain*(v+offset)) - 0.5| * 2``
White/Black  Auto        gray ``t``, the Auto value below, as it is: Auto [-1,1] shows the lower
                         half of the map's range black and its upper half black to white
Red/Blue     any         ``t = ((clamp(v) - min)/(max - min) - 0.5) * 2`` (Linear),
                         ``(sigmoid(gain*(v+offset)) - 0.5) * 2`` (Sigmoid) or Auto;
                         red ``t`` where ``t > 0``, blue ``-t`` where ``t < 0``
Custom       any         the same ``t`` as Red/Blue goes into three expressions (R, G, B or
                         H, S, L; see :mod:`.expressions`); HSL is converted as
                         ``colorsys.hls_to_rgb(h, l, s)`` unclipped, like the original: the
                         hue wraps around (h mod 1), S and L act beyond [0, 1]
===========  ==========  ====================================================================

Auto [0,1] is ``(clamp(v, mn, mx) - mn) / (mx - mn)`` and Auto [-1,1] is ``(that - 0.5) * 2``,
where ``mn, mx`` are the min and max of the *finite* values of the map (NaN is ignored, so
``+inf``/``-inf`` land on the ends of the range). Auto symmetric (``autosym``) is Auto [-1,1]
over ``(-m, m)``, ``m = max(|mn|, |mx|)`` (:func:`symmetric_ranges`): ``t = v / m``, so 0 is
``t = 0`` whatever the data, and a map without negative values takes ``t`` in [0, 1] only. A map whose range is empty (no finite value)
or a single value passes through unchanged, as in the original. ``auto_scope`` says which maps
share one range: each channel on its own (``"channel"``, the original's behaviour), or all
maps of a block, step or run; the caller passes the shared range as ``minmax``
(:func:`map_ranges` and :func:`merge_ranges` compute it).

A channel ``x`` becomes the byte ``clip(x * 256, 0, 255)`` truncated; NaN gives 0 (black).
White/Black gives grayscale images (uint8 ``[N, H, W]``), the others RGB (``[N, H, W, 3]``).

Examples
--------
>>> maps = np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 2, 3)
>>> colorize(maps, ColorSpec("Red/Blue", "linear"))[0, 0]
array([[  0,   0, 255],
       [  0,   0, 153],
       [  0,   0,  51]], dtype=uint8)
>>> ColorSpec().slug()
'hsl-auto01'
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from dumpunet.analyzer.color import kernels
from dumpunet.analyzer.color.float16 import HALF, check_float, kernel_view
from dumpunet.analyzer.color.lut import build_lut, exact_pixels
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.errors import ColorSpecError

__all__ = ["ColorSpec", "colorize", "map_ranges", "merge_ranges", "symmetric_ranges"]


def _transform_params(spec: ColorSpec) -> tuple[int, bool, float, float, float, float]:
    """Kernel (code, absolute, a, b, c, d) for the spec; see :mod:`.kernels`."""
    gray = spec.grayscale
    lo, hi = spec.clamp_min, spec.clamp_max
    # White/Black takes |.| only where the original's transform did (its Sigmoid); Auto values
    # go to the pixel as they are, so negative ones are black.
    if spec.transform == "auto01":
        return kernels.AUTO01, False, 0.0, 0.0, 0.0, 0.0
    if spec.transform in ("auto11", "autosym"):  # autosym: Auto [-1,1] over a symmetric range
        return kernels.AUTO11, False, 0.0, 0.0, 0.0, 0.0
    if spec.transform == "sigmoid":
        return kernels.SIGMOID, gray, spec.gain, spec.offset, 0.0, 0.0
    if gray:
        # The original's create_convert_linear_abs, including its use of np.sign.
        x = 0.0 if np.sign(lo) != np.sign(hi) else min(abs(lo), abs(hi))
        y = max(abs(lo), abs(hi))
        return kernels.LINEAR_ABS, False, lo, hi, x, y
    return kernels.LINEAR, False, lo, hi, 0.0, 0.0


# float dtype -> (same-width signed integer, sign shift, magnitude mask, exponent mask)
_ORDER = {
    np.dtype(np.float16): (np.int16, 15, 0x7FFF, 0x7C00),
    np.dtype(np.float32): (np.int32, 31, 0x7FFF_FFFF, 0x7F80_0000),
    np.dtype(np.float64): (np.int64, 63, 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
}


def map_ranges(maps: np.ndarray) -> np.ndarray:
    """Return float64 ``[N, 2]``: (min, max) of the finite values of each map, NaN if none.

    >>> map_ranges(np.array([[[1, np.inf], [np.nan, -2]]], dtype=np.float32))
    array([[-2.,  1.]])
    """
    maps = check_float(np.asarray(maps))
    n = maps.shape[0]
    flat = np.ascontiguousarray(maps).reshape(n, int(np.prod(maps.shape[1:])))
    itype, shift, magnitude, exponent = _ORDER[maps.dtype]
    keys = np.empty((n, 2), np.int64)
    kernels.ordered_ranges(flat.view(itype), shift, magnitude, exponent, keys)
    bits = (keys ^ ((keys >> shift) & magnitude)).astype(itype)
    out = bits.view(maps.dtype).astype(np.float64)
    out[keys[:, 0] > keys[:, 1]] = np.nan
    return out


def merge_ranges(*ranges: np.ndarray | tuple[float, float]) -> tuple[float, float]:
    """Return the range covering all given ranges (each ``(mn, mx)`` or ``[N, 2]``); NaN ignored.

    >>> merge_ranges(np.array([[0.0, 1.0], [np.nan, np.nan]]), (-3.0, 0.5))
    (-3.0, 1.0)
    """
    parts = [np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in ranges]
    both = np.concatenate(parts) if parts else np.empty((0, 2))
    lo, hi = both[:, 0][~np.isnan(both[:, 0])], both[:, 1][~np.isnan(both[:, 1])]
    if lo.size == 0 or hi.size == 0:
        return (math.nan, math.nan)
    return (float(lo.min()), float(hi.max()))


def symmetric_ranges(ranges: np.ndarray | tuple[float, float]) -> np.ndarray:
    """``(min, max)`` ranges (``[N, 2]`` or one pair) as ``(-m, m)``, ``m = max(|min|, |max|)``: Auto symmetric.

    >>> symmetric_ranges(np.array([[-1.0, 3.0], [0.5, 2.0], [np.nan, np.nan]]))
    array([[-3.,  3.],
           [-2.,  2.],
           [nan, nan]])
    """
    arr = np.asarray(ranges, dtype=np.float64)
    m = np.maximum(np.abs(arr[..., 0]), np.abs(arr[..., 1]))
    return np.stack([-m, m], axis=-1)


def _ranges(maps: np.ndarray, spec: ColorSpec, minmax) -> np.ndarray:
    ranges = _data_ranges(maps, spec, minmax)
    return np.ascontiguousarray(symmetric_ranges(ranges)) if spec.transform == "autosym" else ranges


def _data_ranges(maps: np.ndarray, spec: ColorSpec, minmax) -> np.ndarray:
    n = maps.shape[0]
    if not spec.transform.startswith("auto"):
        return np.zeros((n, 2), np.float64)
    if minmax is None:
        ranges = map_ranges(maps)
        if spec.auto_scope != "channel":
            ranges[:] = merge_ranges(ranges)
        return ranges
    arr = np.asarray(minmax, dtype=np.float64)
    if arr.shape == (2,):
        arr = np.broadcast_to(arr, (n, 2))
    elif arr.shape != (n, 2):
        raise ValueError(f"minmax must be a (min, max) pair or an [N, 2] array with N = {n}, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError("minmax must be finite (NaN for a map without finite values)")
    if np.any(arr[:, 0] > arr[:, 1]):
        i = int(np.flatnonzero(arr[:, 0] > arr[:, 1])[0])
        raise ValueError(f"minmax[{i}] = ({arr[i, 0]}, {arr[i, 1]}) has min > max")
    return np.ascontiguousarray(arr)


def _run(data: np.ndarray, half: np.ndarray | None, ranges: np.ndarray, spec: ColorSpec, out: np.ndarray) -> None:
    """Colorize kernel input ``data`` ``[N, P]`` into ``out`` ``[N, P, 1 or 3]``."""
    n = data.shape[0]
    code, absolute, a, b, c, d = _transform_params(spec)
    if spec.method == "White/Black":
        kernels.colorize_gray(data, half, ranges, code, absolute, a, b, c, d, out.reshape(out.shape[:2]))
    elif spec.method == "Red/Blue":
        kernels.colorize_red_blue(data, half, ranges, code, a, b, c, d, out)
    else:
        lo = 0.0 if spec.transform == "auto01" else -1.0
        lut = build_lut(spec.space, tuple(e.text for e in spec.expressions), lo, 1.0)
        args = (data, half, ranges, code, a, b, c, d, lut.limits)
        pending = np.empty(n, np.int64)
        kernels.colorize_lut(*args, lut.colors, lut.lo, lut.hi, lut.scale, out, pending)
        if pending.any():
            offsets = np.concatenate([[0], np.cumsum(pending)])
            index = np.empty(offsets[-1], np.int64)
            values = np.empty(offsets[-1], np.float64)
            kernels.gather_pending(*args, lut.lo, lut.hi, lut.scale, offsets, index, values)
            out.reshape(-1, 3)[index] = exact_pixels(values, spec.expressions, spec.space)


_ALL_HALVES = np.arange(1 << 16, dtype=np.uint16).reshape(1, -1)


@lru_cache(maxsize=32)
def _half_table(spec: ColorSpec) -> np.ndarray:
    """The pixel of every float16 value under a range-free transform: uint8 [65536, 1 or 3]."""
    table = np.empty((1, 1 << 16, 1 if spec.grayscale else 3), np.uint8)
    _run(_ALL_HALVES, HALF, np.zeros((1, 2)), spec, table)
    table = table[0]
    table.setflags(write=False)
    return table


def colorize(
    maps: np.ndarray,
    spec: ColorSpec,
    *,
    minmax: tuple[float, float] | np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Colorize float maps ``[N, H, W]``; return uint8 ``[N, H, W]`` (White/Black) or ``[N, H, W, 3]``.

    ``minmax`` is used by the Auto transforms only: None computes each map's own range (or,
    with ``spec.auto_scope`` other than "channel", one range over all ``maps``); a pair is one
    range for all maps; an ``[N, 2]`` array gives each map its range. ``out`` (uint8,
    C-contiguous, the returned shape) is written in place.

    Examples
    --------
    >>> maps = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float16)
    >>> colorize(maps, ColorSpec("White/Black", "Auto [0,1]"))
    array([[[  0, 128, 255]]], dtype=uint8)
    >>> colorize(maps, ColorSpec())[0, 0, 1]  # hue 5/6: magenta
    array([255,   0, 255], dtype=uint8)
    """
    if spec.pca:
        raise ColorSpecError("method PCA colours channel vectors by a fitted basis: render it with dumpunet.render")
    maps = check_float(np.asarray(maps))
    if maps.ndim != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {maps.shape}")
    n, h, w = maps.shape
    shape = (n, h, w) if spec.grayscale else (n, h, w, 3)
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape}")
    flat_out = out.reshape((n, h * w, 1 if spec.grayscale else 3))
    data, half = kernel_view(maps.reshape(n, h * w))
    if half is not None and spec.transform in ("linear", "sigmoid"):
        # No per-map range: a float16 map is a function of its 65536 possible values.
        kernels.apply_table(data, _half_table(spec), flat_out)
        return out
    _run(data, half, _ranges(maps, spec, minmax), spec, flat_out)
    return out

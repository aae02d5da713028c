"""Per-block summaries of feature maps: channel averages and differences.

The original extension offered an extra "average" image per block next to the channel grid.
Here the reductions over the channels of one block ``[C, H, W]`` are:

==========  ===========================================  =========================================
``mean``    ``sum_c v / C``                              the original's "sum" choice (torch.mean)
``1-norm``  ``sum_c |v| / C``                            the original's "1-norm" (its norm / C)
``2-norm``  ``sqrt(sum_c v**2) / C``                     the original's "2-norm" (its norm / C)
``l1``      ``sum_c |v|``                                the plain 1-norm, not divided by C
``l2``      ``sqrt(sum_c v**2)``                         the plain 2-norm (Euclidean length)
==========  ===========================================  =========================================

Sums run in float64 in channel order; results are float32 ``[H, W]``. NaN anywhere in a pixel's
channels makes that pixel NaN.

Examples
--------
>>> x = np.array([[[3.0]], [[-4.0]]], dtype=np.float16)
>>> [float(channel_average(x, k)[0, 0]) for k in AVERAGES]
[-0.5, 3.5, 2.5, 7.0, 5.0]
>>> difference(np.float16([1.5]), np.float16([2.0]))
array([-0.5], dtype=float32)
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from dumpunet.analyzer.color import kernels
from dumpunet.analyzer.color.float16 import check_float, kernel_view
from dumpunet.errors import OptionError

__all__ = ["AVERAGES", "average_label", "channel_average", "difference"]

# name -> (kernel kind: 0 sum, 1 sum of |v|, 2 sum of v**2; square root; divide by C)
_KINDS = {
    "mean": (0, False, True),
    "1-norm": (1, False, True),
    "2-norm": (2, True, True),
    "l1": (1, False, False),
    "l2": (2, True, False),
}
AVERAGES = tuple(_KINDS)


def channel_average(
    x: np.ndarray,
    kind: Literal["mean", "1-norm", "2-norm", "l1", "l2"] = "mean",
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Reduce ``x`` ``[C, H, W]`` over its channels; return float32 ``[H, W]`` (or fill ``out``)."""
    if kind not in _KINDS:
        raise OptionError(f"unknown channel average {kind!r} (valid: {', '.join(_KINDS)})")
    x = check_float(np.asarray(x), "x")
    if x.ndim != 3:
        raise ValueError(f"x must be [C, H, W], got shape {x.shape}")
    c, h, w = x.shape
    acc = np.zeros(h * w, np.float64)
    data, half = kernel_view(x.reshape(c, h * w))
    code, root, per_channel = _KINDS[kind]
    kernels.channel_accumulate(data, half, code, acc)
    with np.errstate(all="ignore"):
        if root:
            np.sqrt(acc, out=acc)
        if per_channel:
            acc /= c
    if out is None:
        out = np.empty((h, w), np.float32)
    out[...] = acc.reshape(h, w)
    return out


def average_label(kind: str) -> str:
    """How a file name says which average it shows: ``avg-2norm`` for ``2-norm``.

    >>> [average_label(k) for k in AVERAGES]
    ['avg-mean', 'avg-1norm', 'avg-2norm', 'avg-l1', 'avg-l2']
    """
    if kind not in _KINDS:
        raise OptionError(f"unknown channel average {kind!r} (valid: {', '.join(_KINDS)})")
    return "avg-" + kind.replace("-", "")


def difference(a: np.ndarray, b: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Return ``a - b`` in float32 (same shapes; float16/32/64 inputs), for difference maps."""
    a = check_float(np.asarray(a), "a")
    b = check_float(np.asarray(b), "b")
    if a.shape != b.shape:
        raise ValueError(f"cannot subtract maps of shapes {a.shape} and {b.shape}")
    if out is None:
        out = np.empty(a.shape, np.float32)
    elif out.shape != a.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {a.shape}")
    data_a, half_a = kernel_view(a.reshape(1, a.size))
    data_b, half_b = kernel_view(b.reshape(1, b.size))
    kernels.diff(data_a, half_a, data_b, half_b, out.reshape(a.size))
    return out

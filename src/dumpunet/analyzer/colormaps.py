"""Perceptual colour maps for heatmaps: values in [0, 1] -> uint8 RGB, numpy only (no matplotlib).

``turbo`` (the default) is the degree-5 polynomial fit Turbo's authors published (Google,
Apache-2.0); ``viridis`` and ``magma`` (van der Walt and Smith, CC0) are matplotlib's tables sampled
at 9 evenly spaced points, interpolated linearly between them in RGB.

Examples
--------
>>> colormap(np.array([0.0, 1.0]), "viridis").tolist()
[[68, 1, 84], [253, 231, 37]]
>>> colormap(np.array([0.0, 1.0]), "magma").tolist()
[[0, 0, 4], [252, 253, 191]]
"""

from __future__ import annotations

import numpy as np

from dumpunet.errors import OptionError

__all__ = ["COLORMAPS", "DEFAULT_COLORMAP", "TURBO", "colormap"]

TURBO = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)
"""Turbo's polynomial coefficients per channel (R, G, B), constant term first (also the kernel's)."""
TURBO.setflags(write=False)


def _table(hexes: str) -> np.ndarray:
    return np.array([[int(h[i : i + 2], 16) for i in (0, 2, 4)] for h in hexes.split()], np.float64)


# matplotlib's viridis and magma at 0, 1/8, ..., 1 (the same 9 colours d3-scale-chromatic lists).
_TABLES = {
    "viridis": _table("440154 472d7b 3b528b 2c728e 21918c 28ae80 5ec962 addc30 fde725"),
    "magma": _table("000004 1c1044 4f127b 812581 b5367a e55064 fb8761 fec287 fcfdbf"),
}

COLORMAPS = ("turbo", "viridis", "magma")
DEFAULT_COLORMAP = "turbo"


def _turbo(v: np.ndarray) -> np.ndarray:
    """Turbo's polynomial of values in [0, 1], times 255, clipped: ``[..., 3]`` float64.

    Horner's rule per channel in place (7x faster than powers and a matrix product on a 512 x 512
    heatmap, and the same bytes once rounded: tests/analyzer/test_attention_view.py).
    """
    x = v.astype(np.float64, copy=False)
    rgb = np.empty((*x.shape, 3), np.float64)
    for c, poly in enumerate(TURBO):
        acc = np.full(x.shape, poly[-1])
        for coef in poly[-2::-1]:
            acc *= x
            acc += coef
        rgb[..., c] = acc
    np.clip(rgb, 0.0, 1.0, out=rgb)
    rgb *= 255
    return rgb


def colormap(values: np.ndarray, name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Map values in [0, 1] (clipped) to uint8 RGB ``[..., 3]`` with the colour map ``name``."""
    v = np.clip(values, 0.0, 1.0)
    if name == "turbo":
        rgb = _turbo(v)
    elif name in _TABLES:
        table = _TABLES[name]
        x = np.linspace(0.0, 1.0, len(table))
        rgb = np.stack([np.interp(v, x, table[:, c]) for c in range(3)], axis=-1)
    else:
        raise OptionError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    return rgb.round().astype(np.uint8)

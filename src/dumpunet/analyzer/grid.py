"""Lay the channel images of one block out as one grid image, as the original extension did.

Channel 0 sits at the top left, then row by row. Tiles are separated by 1-pixel black lines,
with no outer border, so a grid of ``cols x rows`` tiles of ``w x h`` pixels is
``cols*(w+1) - 1`` wide and ``rows*(h+1) - 1`` high. :func:`grid_shape` picks the layout by the
original's rule, so a block's grid has the same rows and columns as there at every image size.

Examples
--------
>>> grid_shape(320, 8, 8)
(20, 16)
>>> grid_shape(320, 64, 32, image=(512, 256))  # SD1 IN00 of a 256x512 portrait
(32, 10)
>>> images = np.full((4, 2, 2), 255, np.uint8)
>>> tile(images, *grid_shape(4, 2, 2))
array([[255, 255,   0, 255, 255],
       [255, 255,   0, 255, 255],
       [  0,   0,   0,   0,   0],
       [255, 255,   0, 255, 255],
       [255, 255,   0, 255, 255]], dtype=uint8)
"""

from __future__ import annotations

import numpy as np

from dumpunet.analyzer.color import kernels
from dumpunet.errors import OptionError

__all__ = ["MAX_GRID_PIXELS", "grid_shape", "grid_size", "tile"]

MAX_GRID_PIXELS = 1 << 28
"""Largest grid image (268M pixels, 805 MB in RGB); every grid is sized here before it is allocated."""


def grid_size(cols: int, rows: int, h: int, w: int, scale: int = 1) -> tuple[int, int]:
    """Return the (height, width) in pixels of a grid of ``cols x rows`` tiles of ``h x w``.

    A grid over :data:`MAX_GRID_PIXELS` is an :class:`~dumpunet.errors.OptionError`.
    """
    height, width = max(rows * (h * scale + 1) - 1, 0), max(cols * (w * scale + 1) - 1, 0)
    if height * width > MAX_GRID_PIXELS:
        raise OptionError(f"a grid of {width}x{height} pixels is larger than the limit of {MAX_GRID_PIXELS} pixels; "
                          "lower --scale or select fewer channels")
    return height, width


def grid_shape(n: int, h: int, w: int, *, image: tuple[int, int] | None = None) -> tuple[int, int]:
    """Return ``(cols, rows)`` with ``cols * rows == n``, by the original extension's rule.

    The rule grows the grid one factor of ``n`` at a time, measuring it in tiles of the
    original's proportions: each factor 2 of ``n``, then the odd rest, multiplies the columns
    if the grid is not wider than high (so ties widen it), else the rows. Then, while one side is
    more than twice the other and its tile count is even, a factor 2 moves from it to the other.

    The original sized a tile from the image, not from the map: a block at 1/k of the latent
    resolution was ``8/k * ceil(size / 64)`` units per side, which differs from the map's own
    shape where the image size is not a multiple of 64. Pass the generated image's ``(height,
    width)`` in pixels as ``image`` to use those proportions (as :func:`dumpunet.render` does
    when the store knows them); without it the map's ``h x w`` is used. ``n == 0`` gives
    ``(0, 0)``.

    >>> grid_shape(7, 8, 8), grid_shape(4, 8, 8), grid_shape(1, 8, 8), grid_shape(10, 16, 16)
    ((7, 1), (2, 2), (1, 1), (2, 5))
    """
    if n < 0 or h < 0 or w < 0:
        raise ValueError(f"negative grid size: n={n}, h={h}, w={w}")
    if n == 0:
        return (0, 0)
    if image is not None:
        unit_h, unit_w = (-(-int(side) // 64) for side in image)
    else:
        unit_h, unit_w = h, w
    cols = rows = 1
    rest = n
    factors = []
    while rest % 2 == 0:
        factors.append(2)
        rest //= 2
    factors.append(rest)
    for f in factors:
        if cols * unit_w <= rows * unit_h:
            cols *= f
        else:
            rows *= f
    if cols * unit_w > rows * unit_h:
        while cols * unit_w > 2 * rows * unit_h and cols % 2 == 0:
            cols, rows = cols // 2, rows * 2
    else:
        while 2 * cols * unit_w < rows * unit_h and rows % 2 == 0:
            cols, rows = cols * 2, rows // 2
    return cols, rows


def tile(images: np.ndarray, cols: int, rows: int, scale: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Tile uint8 images ``[N, H, W]`` or ``[N, H, W, 3]`` into one grid image.

    Tiles beyond N (when ``cols * rows > N``) stay black; ``scale`` enlarges each tile by
    pixel repetition before the separators are drawn. ``out`` (uint8, C-contiguous, the
    returned shape) is written in place.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
        raise ValueError(f"images must be uint8 [N, H, W] or [N, H, W, 3], got {images.dtype} {images.shape}")
    n, h, w = images.shape[:3]
    if cols < 0 or rows < 0 or cols * rows < n:
        raise ValueError(f"a {cols}x{rows} grid cannot hold {n} images")
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    shape = grid_size(cols, rows, h, w, scale) + images.shape[3:]
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}, got {out.dtype} {out.shape}")
    if out.size:
        channels = 1 if images.ndim == 3 else 3
        src = np.ascontiguousarray(images).reshape(n, h, w, channels)
        kernels.tile(src, cols, scale, out.reshape(shape[0], shape[1], channels))
    return out

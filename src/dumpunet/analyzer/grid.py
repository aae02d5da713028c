"""Lay the channel images of one block out as one grid image, as the original extension did.

Channel 0 sits at the top left, then row by row. Tiles are separated by 1-pixel black lines,
with no outer border, so a grid of ``cols x rows`` tiles of ``w x h`` pixels is
``cols*(w+1) - 1`` wide and ``rows*(h+1) - 1`` high. :func:`grid_shape` picks the most nearly
square layout that holds exactly N tiles.

Examples
--------
>>> grid_shape(320, 8, 8)
(20, 16)
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

__all__ = ["grid_shape", "grid_size", "tile"]


def grid_size(cols: int, rows: int, h: int, w: int, scale: int = 1) -> tuple[int, int]:
    """Return the (height, width) in pixels of a grid of ``cols x rows`` tiles of ``h x w``."""
    return max(rows * (h * scale + 1) - 1, 0), max(cols * (w * scale + 1) - 1, 0)


def grid_shape(n: int, h: int, w: int) -> tuple[int, int]:
    """Return ``(cols, rows)`` with ``cols * rows == n`` making the grid most nearly square.

    Among the divisors of ``n``, the one minimizing ``|grid width - grid height|`` wins; on a
    tie the wider grid does. ``n == 0`` gives ``(0, 0)``.

    >>> grid_shape(7, 8, 8), grid_shape(4, 8, 8), grid_shape(1, 8, 8)
    ((7, 1), (2, 2), (1, 1))
    """
    if n < 0 or h < 0 or w < 0:
        raise ValueError(f"negative grid size: n={n}, h={h}, w={w}")
    if n == 0:
        return (0, 0)
    best: tuple[int, int] | None = None
    best_key: tuple[int, int] | None = None
    for cols in range(1, n + 1):
        if n % cols:
            continue
        rows = n // cols
        height, width = grid_size(cols, rows, h, w)
        key = (abs(width - height), -width)
        if best_key is None or key < best_key:
            best, best_key = (cols, rows), key
    assert best is not None
    return best


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

"""Labels around a render or diff grid: what it shows, which tile is which channel, what colours mean.

A labelled grid (the default; ``GridStyle(plain=True)`` leaves the bare tiles) is the grid with

- a title strip above it: store and run (a diff: ``run - base``), block with its diffusers module,
  step with its timestep, image, guidance half, then the channels or their average, the tile
  scale and the colorization in words (:meth:`ColorSpec.words`);
- each tile's channel number in its top left corner (when the tile is large enough to hold it);
- a colour bar below it: the colours of the values from :func:`bar_range`'s minimum to maximum,
  drawn by the same colorization, with both ends written beside it.

The range a colour bar shows is the range the colours mean: the clamp of Linear, the values
Sigmoid takes from 2% to 98% of its span, and for the Auto transforms the range actually used
(the grid's, step's or run's :class:`~dumpunet.analyzer.scope.AutoRanges`); Auto symmetric
(``autosym``) spans ``[-m, m]``, or only ``[0, m]`` (``[-m, 0]``) where no value is negative
(positive): a one-sided bar for a one-sided map such as a norm average. With scope
``channel`` every tile has its own range, so the bar runs from "tile min" to "tile max". PCA
grids get no bar (their colours are three principal components).

Examples
--------
>>> from dumpunet.analyzer.color.spec import ColorSpec
>>> bar_range(ColorSpec(transform="linear", clamp_min=-2, clamp_max=2), None)
(-2.0, 2.0)
>>> bar_range(ColorSpec(auto_scope="block"), (0.25, 3.0))
(0.25, 3.0)
>>> bar_range(ColorSpec(), None) is None  # Auto over each tile: no one range
True
>>> bar_range(ColorSpec(transform="autosym"), (-0.5, 2.0)), bar_range(ColorSpec(transform="autosym"), (0.5, 2.0))
((-2.0, 2.0), (0.0, 2.0))
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from dumpunet.analyzer.color.colorize import colorize
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.analyzer.labels import text_box, text_image
from dumpunet.analyzer.selection import DiffSelection, Selection, Slab

__all__ = ["SIGMOID_SPAN", "bar_info", "bar_range", "colour_bar", "frame", "label_grid", "number", "title_lines"]

SIGMOID_SPAN = 4.0
"""A Sigmoid bar spans ``-offset +- SIGMOID_SPAN / |gain|``: sigmoid(4) = 0.982."""

BAR_HEIGHT = 12
BAR_WIDTH = 256
MIN_TITLE_WIDTH = 240
"""Title lines wrap at the picture's width (and the colour bar's), but not narrower than this."""
_GAP = 4  # pixels between the parts
_PAD = 2  # text_image's padding on each side


def wrap(lines: list[str], width: int) -> list[str]:
    """Break title lines so each fits ``width`` pixels: between `` | ``-separated fields first, then
    between words; a single word wider than ``width`` stays whole (the picture then widens for it).

    >>> wrap(["girl | run main | OUT11 (unet.out11) | step 20"], 160)
    ['girl | run main', 'OUT11 (unet.out11) | step 20']
    """
    out: list[str] = []
    for line in lines:
        for field_line in _greedy(line.split(" | "), " | ", width):
            out += _greedy(field_line.split(" "), " ", width) if _width(field_line) > width else [field_line]
    return out


def _width(text: str) -> int:
    return text_box(text)[0] + 2 * _PAD


def _greedy(parts: list[str], sep: str, width: int) -> list[str]:
    lines = [parts[0]]
    for part in parts[1:]:
        joined = lines[-1] + sep + part
        if _width(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def bar_range(color: ColorSpec, minmax: tuple[float, float] | None) -> tuple[float, float] | None:
    """The values from the colour bar's one end to the other; None for none (PCA), or one per tile.

    ``minmax`` is the Auto range the grid was coloured with (None: each tile its own).
    """
    if color.pca:
        return None
    if color.transform == "linear":
        return (color.clamp_min, color.clamp_max)
    if color.transform == "sigmoid":
        half = SIGMOID_SPAN / abs(color.gain) if color.gain else 1.0
        return (-color.offset - half, -color.offset + half)
    if minmax is None or math.isnan(minmax[0]):
        return None
    lo, hi = float(minmax[0]), float(minmax[1])
    if color.transform == "autosym":  # the half of [-m, m] the data take, or all of it
        m = max(abs(lo), abs(hi))
        return (0.0 if lo >= 0 else -m, 0.0 if hi <= 0 else m) if m else (lo, hi)
    return (lo, hi)


def bar_info(color: ColorSpec, minmax: tuple[float, float] | None) -> dict[str, Any] | None:
    """The manifest's ``colorbar``: ``min``, ``max`` and what they span (``tile``, ``grid``, ``step``,
    ``run`` or ``fixed``); None where no bar is drawn."""
    if color.pca:
        return None
    rng = bar_range(color, minmax)
    spans = {"none": "fixed", "channel": "tile", "block": "grid"}.get(color.scope, color.scope)
    if rng is None and spans != "tile":
        return None  # an Auto range over no finite value
    return {"min": None if rng is None else rng[0], "max": None if rng is None else rng[1], "spans": spans}


def title_lines(sel: Selection, slab: Slab, color: ColorSpec, *, average: str | None, scale: int) -> list[str]:
    """The title strip's lines: what the grid shows, then how it is drawn."""
    run = f"run {sel.run.name}"
    if isinstance(sel, DiffSelection):
        # two stores (diff A B): the label names both stores and runs, "a.zarr:main - b.zarr:main"
        run = f"diff {sel.run.name} - {sel.base.name}" if sel.base.store is sel.store else f"diff {sel.pair['label']}"
    block = slab.block + (" input" if slab.which == "input" else "")
    module = next((b.input_module if slab.which == "input" else b.module
                   for b in sel.store.block_table if b.name == slab.block), "")
    if module:
        block += f" ({module})"
    step = f"step {slab.step}" + (f" (t={slab.timestep:g})" if math.isfinite(slab.timestep) else "")
    first = " | ".join([sel.label, run, block, step, f"image {slab.image}", slab.guidance])
    channels = sel.channel_text(slab.block)
    what = f"{average} over channels {channels}" if average else f"channels {channels}"
    return [first, f"{what} | x{scale} | {color.words()}"]


def _bar(color: ColorSpec, rng: tuple[float, float] | None) -> np.ndarray:
    """The colour bar's pixels ``[BAR_HEIGHT, BAR_WIDTH(, 3)]``, coloured exactly as the grid's values."""
    if rng is None:  # one range per tile: the tile's min to its max
        values, minmax = np.linspace(0.0, 1.0, BAR_WIDTH), (0.0, 1.0)
    else:
        values, minmax = np.linspace(rng[0], rng[1], BAR_WIDTH), rng
    row = colorize(values.astype(np.float32)[None, None], color, minmax=minmax)[0]  # [1, W(, 3)]
    return np.repeat(row, BAR_HEIGHT, axis=0)


def colour_bar(color: ColorSpec, rng: tuple[float, float] | None,
               ends: tuple[str, str] = ("tile min", "tile max")) -> tuple[np.ndarray, str, str]:
    """The colour bar :func:`frame` draws: its pixels and the texts of its two ends.

    ``rng`` is :func:`bar_range`'s; None (one range per tile, or per head row) draws the colours
    of each tile's (row's) own minimum to maximum, with ``ends`` written beside them.
    """
    lo, hi = ends if rng is None else (number(rng[0]), number(rng[1]))
    return _bar(color, rng), lo, hi


@lru_cache(maxsize=4096)
def _tile_number(n: int) -> np.ndarray:
    """A tile's channel number (cached: a grid of 1280 tiles draws each number once per process)."""
    g = text_image(str(n), pad=1)
    g.flags.writeable = False
    return g


def number(x: float) -> str:
    """A value as a colour bar's end writes it."""
    return f"{x:.4g}"


def label_grid(
    grid: np.ndarray,
    *,
    lines: list[str],
    tiles: list[int] | None,
    cols: int,
    cell: tuple[int, int],
    color: ColorSpec,
    minmax: tuple[float, float] | None,
) -> np.ndarray:
    """Frame a grid: title ``lines`` above, channel numbers ``tiles`` on its tiles, the colour bar below.

    ``cell`` is a tile's ``(height, width)`` in pixels as drawn; ``tiles`` None draws no numbers.
    Returns a new uint8 array of the grid's mode (gray or RGB) on black.
    """
    bar = None
    if not color.pca and bar_info(color, minmax) is not None:
        bar = colour_bar(color, bar_range(color, minmax))
    canvas, top = frame(grid, lines=lines, bar=bar)
    if tiles is not None:
        ch, cw = cell
        for i, n in enumerate(tiles):
            g = _tile_number(n)
            if g.shape[0] * 2 > ch or g.shape[1] > cw:
                break  # tiles too small to hold their numbers: the title says which channels
            r, c = divmod(i, cols)
            _put(canvas, g, top + r * (ch + 1), c * (cw + 1))
    return canvas


def frame(
    picture: np.ndarray, *, lines: list[str], bar: tuple[np.ndarray, str, str] | None
) -> tuple[np.ndarray, int]:
    """Put title ``lines`` above a picture and a colour ``bar`` (pixels, low end's text, high end's) below it.

    The title lines wrap (:func:`wrap`) at the width of the picture or the bar, whichever is
    wider (at least :data:`MIN_TITLE_WIDTH`), so a narrow grid is not dwarfed by its title.

    Returns the new uint8 canvas of the picture's mode (gray or RGB) on black, and the row where
    the picture starts; the picture's pixels are copied unchanged.
    """
    width = picture.shape[1]
    if bar is not None:
        pixels, lo_g, hi_g = bar[0], text_image(bar[1]), text_image(bar[2])
        bar_h = max(pixels.shape[0], lo_g.shape[0], hi_g.shape[0])
        width = max(width, lo_g.shape[1] + pixels.shape[1] + hi_g.shape[1] + 2 * _GAP)
    titles = [text_image(t) for t in wrap(lines, max(width, MIN_TITLE_WIDTH))]
    top = sum(g.shape[0] for g in titles) + _GAP
    width = max([width, *(g.shape[1] for g in titles)])
    height = top + picture.shape[0] + (_GAP + bar_h if bar is not None else 0)
    canvas = np.zeros((height, width, *picture.shape[2:]), np.uint8)
    y = 0
    for g in titles:
        _put(canvas, g, y, 0)
        y += g.shape[0]
    canvas[top : top + picture.shape[0], : picture.shape[1]] = picture
    if bar is not None:
        y = top + picture.shape[0] + _GAP
        _put(canvas, lo_g, y, 0)
        x = lo_g.shape[1] + _GAP
        canvas[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        _put(canvas, hi_g, y, x + pixels.shape[1] + _GAP)
    return canvas, top


def _put(canvas: np.ndarray, glyphs: np.ndarray, y: int, x: int) -> None:
    """Write white-on-black text over whatever is there (its black box included)."""
    h = min(glyphs.shape[0], canvas.shape[0] - y)
    w = min(glyphs.shape[1], canvas.shape[1] - x)
    g = glyphs[:h, :w]
    canvas[y : y + h, x : x + w] = g[:, :, None] if canvas.ndim == 3 else g

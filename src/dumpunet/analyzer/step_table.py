"""A block x step heatmap: one coloured cell per (row label, step), with labels and a colour bar.

``diff``'s ``summary.png`` draws how much each block changed at each step this way (rows: blocks
in U-Net order, columns: steps), which stays readable with 25 blocks where 25 overlapping lines
do not. Cell colours are a perceptual colour map (:mod:`.colormaps`) over ``[0, max]`` of the
finite values, stated by the colour bar under the table; a cell whose value is ``inf`` (a block
whose base was all zero) is white, one with no value (a step not recorded) stays black.

Examples
--------
>>> img = step_table({"M00": {1: 0.1, 5: 0.4}, "OUT11": {1: 0.2, 5: math.inf}}, lines=["how much changed"])
>>> img.shape[2], img.dtype
(3, dtype('uint8'))
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from dumpunet.analyzer.colormaps import DEFAULT_COLORMAP, colormap
from dumpunet.analyzer.grid_labels import BAR_HEIGHT, BAR_WIDTH, frame, number
from dumpunet.analyzer.labels import paste, text_image

__all__ = ["CELL", "INF_COLOR", "step_table", "table_layout"]

CELL = (14, 24)
"""A cell's height and width in pixels."""
INF_COLOR = (255, 255, 255)
_GAP = 4


def table_layout(rows: list[str], steps: list[int]) -> tuple[int, int, int]:
    """``(left, top, step_every)``: where the first cell starts and how often a step gets its number."""
    left = max(text_image(r).shape[1] for r in rows) + _GAP
    widest = max(text_image(str(s)).shape[1] for s in steps)
    every = max(1, math.ceil((widest + 2) / (CELL[1] + 1)))
    top = text_image("0").shape[0] + _GAP // 2
    return left, top, every


def step_table(values: Mapping[str, Mapping[int, float]], *, lines: list[str],
               cmap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Draw ``{row: {step: value}}`` (values >= 0) as a labelled table of coloured cells; uint8 RGB.

    Row ``r`` (in the mapping's order), column ``c`` (steps ascending) is the cell whose top left
    corner is ``(left + c * (CELL[1] + 1), top + r * (CELL[0] + 1))`` of the table (before the
    title strip :func:`~dumpunet.analyzer.grid_labels.frame` adds above it).
    """
    rows = list(values)
    steps = sorted({s for v in values.values() for s in v})
    finite = [x for v in values.values() for x in v.values() if math.isfinite(x)]
    top_value = max(finite, default=0.0)
    ch, cw = CELL
    left, top, every = table_layout(rows, steps)
    canvas = np.zeros((top + len(rows) * (ch + 1), left + len(steps) * (cw + 1), 3), np.uint8)
    for c, s in enumerate(steps):
        if c % every == 0 or c == len(steps) - 1:
            paste(canvas, text_image(str(s)), 0, left + c * (cw + 1))
    for r, row in enumerate(rows):
        y = top + r * (ch + 1)
        paste(canvas, text_image(row), y, 0)
        for c, s in enumerate(steps):
            x = left + c * (cw + 1)
            value = values[row].get(s)
            if value is None or math.isnan(value):
                continue
            if math.isinf(value):
                color = np.array(INF_COLOR, np.uint8)
            else:
                color = colormap(np.array(value / top_value if top_value > 0 else 0.0), cmap)
            canvas[y : y + ch, x : x + cw] = color
    bar = colormap(np.linspace(0.0, 1.0, BAR_WIDTH), cmap)[None].repeat(BAR_HEIGHT, axis=0)
    return frame(canvas, lines=lines, bar=(bar, "0", number(top_value)))[0]

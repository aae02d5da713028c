"""step_table: each (row, step) cell at its place in its colour; inf white, missing black; the bar."""

from __future__ import annotations

import math

import numpy as np

from dumpunet.analyzer.colormaps import colormap
from dumpunet.analyzer.grid_labels import BAR_HEIGHT
from dumpunet.analyzer.step_table import CELL, INF_COLOR, step_table, table_layout


def test_cells_sit_in_rows_and_step_columns_with_their_colours():
    values = {"IN00": {1: 0.0, 5: 0.5, 10: 2.0}, "M00": {1: 1.0, 10: math.inf}, "OUT11": {5: 0.25, 10: 1.5}}
    img = step_table(values, lines=[], cmap="viridis")
    left, top, _ = table_layout(list(values), [1, 5, 10])
    top += 4  # no title lines: the table starts below frame's gap
    ch, cw = CELL
    expected = {("IN00", 1): colormap(np.array(0.0), "viridis"), ("IN00", 5): colormap(np.array(0.25), "viridis"),
                ("IN00", 10): colormap(np.array(1.0), "viridis"), ("M00", 1): colormap(np.array(0.5), "viridis"),
                ("M00", 5): np.zeros(3, np.uint8), ("M00", 10): np.array(INF_COLOR, np.uint8),
                ("OUT11", 1): np.zeros(3, np.uint8), ("OUT11", 5): colormap(np.array(0.125), "viridis"),
                ("OUT11", 10): colormap(np.array(0.75), "viridis")}
    for (row, step), color in expected.items():
        r, c = list(values).index(row), [1, 5, 10].index(step)
        y, x = top + r * (ch + 1), left + c * (cw + 1)
        assert (img[y : y + ch, x : x + cw] == color).all(), (row, step)
        assert not img[y + ch, x : x + cw].any() and not img[y : y + ch, x + cw].any()  # 1-pixel black gaps
    # the colour bar under the table runs from the map's 0 to its 1 (= the largest finite value, 2)
    bar = img[-BAR_HEIGHT:]
    for end in (0.0, 1.0):
        assert (bar == colormap(np.array(end), "viridis")).all(axis=2).any()


def test_infinite_values_are_white_cells():
    img = step_table({"M00": {1: math.inf, 2: math.nan}}, lines=["t"])
    assert (img == INF_COLOR).all(axis=2).sum() >= CELL[0] * CELL[1]

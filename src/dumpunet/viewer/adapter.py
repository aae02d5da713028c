"""Draw one view state as an image array, with the analyzer's own functions.

The one entry point, :func:`draw`, returns exactly the pixels the matching ``dumpunet``
command (:meth:`ViewState.command`) writes, so a view and its downloaded PNG and CLI render
agree. Grids are :func:`dumpunet.analyzer.render.render_image` (a pair's difference, or two
stores' (``minus``): the same :func:`~dumpunet.analyzer.render.draw_grid` on a
:class:`~dumpunet.analyzer.selection.DiffSelection`); attention grids, heatmaps, final-image
differences and the summary chart follow :mod:`.attention_grids`, :mod:`.heatmap` and :mod:`.diff`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dumpunet.analyzer.attention_grids import _framed, _grids, _Item
from dumpunet.analyzer.color.colorize import colorize
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.analyzer.diff import final_difference, summary_chart, summary_rows
from dumpunet.analyzer.grid import grid_shape, tile
from dumpunet.analyzer.heatmap import overlay, query_map, word_heatmap
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.render import draw_grid, render_image
from dumpunet.analyzer.render_plan import read_maps
from dumpunet.analyzer.scope import AutoRanges
from dumpunet.analyzer.selection import DiffSelection, channel_list, matching_run, select_pair, select_stores
from dumpunet.analyzer.style import GridStyle
from dumpunet.errors import SelectionError
from dumpunet.specs import format_ints
from dumpunet.store import Store
from dumpunet.viewer.state import ViewState
from dumpunet.viewer.structure import run_for

__all__ = ["draw", "grid_channels", "grid_layout", "heatmap_steps", "summary"]

_TILE_TARGET = 32  # attention tiles are enlarged to at least this many pixels, as render_attention does


def draw(store: Store, state: ViewState, minus: Store | None = None) -> np.ndarray:
    """Return the picture of a resolved state: uint8 ``[H, W]`` (White/Black grids) or ``[H, W, 3]``.

    ``minus`` is the store that ``state.minus`` names (the server's list holds it).
    """
    if (state.minus >= 0) != (minus is not None):
        raise SelectionError("the difference of two stores needs the store to subtract (and only then)")
    if state.view == "grid":
        return _grid(store, state, minus)
    if state.view == "attention":
        return _attention(store, state)
    if state.view in ("heatmap", "query"):
        return _overlay(store, state)
    if state.view == "summary":
        return summary(store, state, minus)[0]
    return _final(store, state, minus)


def grid_layout(store: Store, state: ViewState) -> tuple[int, int, int, int] | None:
    """``(cols, rows, tile height, tile width)`` of a state's channel grid; None for other views.

    None too for method PCA: one picture of every channel, no tile to click. A bad channel subset
    raises the spec's caret error, as render's ``--channels`` does.
    """
    chosen = grid_channels(store, state)
    if chosen is None:
        return None
    h, w = run_for(store, state.run, state.pair, state.mode).array(state.block, state.which).shape[4:]
    return (*grid_shape(len(chosen), h, w), h, w)


def grid_channels(store: Store, state: ViewState) -> list[int] | None:
    """The channel of each tile of a state's channel grid, in order (its ``channels`` subset); None without tiles."""
    if state.view != "grid" or state.channel >= 0 or state.average or state.pca:
        return None
    c = run_for(store, state.run, state.pair, state.mode).array(state.block, state.which).shape[3]
    chosen = channel_list(state.channels, c, state.block)
    return list(range(c)) if chosen is None else chosen


def heatmap_steps(store: Store, state: ViewState) -> str:
    """The steps a heatmap sums (and a summary chart shows): every complete step up to the state's."""
    r = run_for(store, state.run, state.pair, state.mode)
    return format_ints([s for s in r.steps if s <= state.step])


def _difference(store: Store, state: ViewState, minus: Store | None, **pick: str) -> DiffSelection:
    """The selection of a pair's difference, or of the difference of two stores."""
    if minus is None:
        return select_pair(store, Pick(**pick), pair=state.pair)
    return select_stores(store, Pick(run=run_for(store, state.run, state.pair, state.mode).name, **pick), minus)


def _grid(store: Store, state: ViewState, minus: Store | None) -> np.ndarray:
    color = ColorSpec(**state.color)
    style = GridStyle(average=state.average or None, plain=True)  # the viewer's page labels the grid
    pick = dict(blocks=state.block, steps=str(state.step), images=str(state.image), guidance=state.guidance,
                channels=state.channel_spec, which=state.which)
    if not (state.pair and state.mode == "diff") and minus is None:
        return render_image(store, Pick(run=run_for(store, state.run, state.pair, state.mode).name, **pick), color, style)
    sel = _difference(store, state, minus, **pick)
    slab = next(sel.slabs())
    ranges = AutoRanges(color)
    if ranges.first_pass:
        ranges.add(read_maps(sel, slab, style.average), step=slab.step, image=slab.image, guidance=slab.guidance)
    image, _ = draw_grid(sel, slab, color, style, ranges, None)
    return image


def _attention(store: Store, state: ViewState) -> np.ndarray:
    color = ColorSpec(**state.color)
    r = run_for(store, state.run, state.pair, state.mode)
    item = _Item(state.layer, state.step, state.image, state.guidance)
    tokens = str(state.token) if state.token >= 0 else ""
    maps, rows, cols, row_labels, col_labels = _grids(r, item, "qk", tokens, None)
    if state.head != "all":
        heads = maps.reshape(rows, cols, *maps.shape[1:])
        if state.head == "mean":
            maps, row_labels = heads.mean(axis=0, dtype=np.float32), ["mean"]
        else:
            k = int(state.head)
            if k >= rows:
                raise SelectionError(f"layer {state.layer} has heads 0..{rows - 1}, not {k}")
            maps, row_labels = heads[k], [row_labels[k]]
        rows = 1
    maps = np.ascontiguousarray(maps)
    h, w = maps.shape[1:]
    k = max(1, min(16, math.ceil(_TILE_TARGET / max(1, min(h, w)))))
    ranges = AutoRanges(color, rows=True)
    where = dict(step=item.step, image=item.image, guidance=item.guidance)
    if ranges.first_pass:
        ranges.add(maps, **where)
    pixels = colorize(maps, color, minmax=ranges.minmax(maps, **where, rows=rows))
    return _framed(tile(pixels, cols, rows, scale=k), rows, cols, (h * k, w * k), row_labels, col_labels)


def _overlay(store: Store, state: ViewState) -> np.ndarray:
    r = run_for(store, state.run, state.pair, state.mode)
    pick = Pick(run=r.name, blocks=state.layers, steps=heatmap_steps(store, state), images=str(state.image),
                guidance=state.guidance)
    if state.view == "heatmap":
        if state.token < 0:
            raise SelectionError("choose a token of the prompt for the word heatmap")
        heat = word_heatmap(store, str(state.token), pick)
    else:
        heat = query_map(store, (state.qx, state.qy), pick)
    return overlay(r.image(state.image), heat, alpha=state.alpha)


def summary(store: Store, state: ViewState, minus: Store | None) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    """diff's summary of a resolved summary state: its block x step heatmap, its ``summary.csv`` rows and the blocks by peak.

    Every recorded block, the steps up to the state's, the state's image and guidance half.
    """
    sel = _difference(store, state, minus, steps=heatmap_steps(store, state), images=str(state.image),
                      guidance=state.guidance, which=state.which)
    rows = summary_rows(sel)
    image, legend = summary_chart(sel, rows)
    return image, rows, legend


def _final(store: Store, state: ViewState, minus: Store | None) -> np.ndarray:
    if minus is not None:
        r = run_for(store, state.run, state.pair, state.mode)
        runs = (matching_run(minus, r.name), r)
    elif state.pair and state.mode == "diff":
        runs = store.pair(state.pair)
    else:
        return run_for(store, state.run, state.pair, state.mode).image(state.image)
    base, layered = (r.image(state.image) for r in runs)
    if base.shape != layered.shape:
        raise SelectionError(f"the final images differ in size: {base.shape[1]}x{base.shape[0]} in run "
                             f"{runs[0].name!r}, {layered.shape[1]}x{layered.shape[0]} in run {runs[1].name!r}")
    return final_difference(base, layered)[1]  # diff's final-diff-norm: the largest difference is white

"""Draw one view state as an image array, with the analyzer's own functions.

The one entry point, :func:`draw`, returns exactly the pixels the matching ``dumpunet``
command (:meth:`ViewState.command`) writes, so a view and its downloaded PNG and CLI render
agree. Grids are :func:`dumpunet.analyzer.render.render_image` (a pair's difference: the same
:func:`~dumpunet.analyzer.render.draw_grid` on a pair selection); attention grids, heatmaps and
final-image differences follow :mod:`.attention_grids`, :mod:`.heatmap` and :mod:`.diff`.
"""

from __future__ import annotations

import math

import numpy as np

from dumpunet.analyzer.attention_grids import _framed, _grids, _Item
from dumpunet.analyzer.color.colorize import colorize
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.analyzer.grid import grid_shape, tile
from dumpunet.analyzer.heatmap import overlay, query_map, word_heatmap
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.render import draw_grid, render_image
from dumpunet.analyzer.render_plan import read_maps
from dumpunet.analyzer.scope import AutoRanges
from dumpunet.analyzer.selection import select_pair
from dumpunet.analyzer.style import GridStyle
from dumpunet.errors import SelectionError
from dumpunet.specs import format_ints
from dumpunet.store import Store
from dumpunet.viewer.state import ViewState
from dumpunet.viewer.structure import run_for

__all__ = ["draw", "grid_layout", "heatmap_steps"]

_TILE_TARGET = 32  # attention tiles are enlarged to at least this many pixels, as render_attention does


def draw(store: Store, state: ViewState) -> np.ndarray:
    """Return the picture of a resolved state: uint8 ``[H, W]`` (White/Black grids) or ``[H, W, 3]``."""
    if state.view == "grid":
        return _grid(store, state)
    if state.view == "attention":
        return _attention(store, state)
    if state.view in ("heatmap", "query"):
        return _overlay(store, state)
    return _final(store, state)


def grid_layout(store: Store, state: ViewState) -> tuple[int, int, int, int] | None:
    """``(cols, rows, tile height, tile width)`` of a state's full channel grid; None for other views."""
    if state.view != "grid" or state.channel >= 0 or state.average:
        return None
    c, h, w = run_for(store, state.run, state.pair, state.mode).array(state.block, state.which).shape[3:]
    return (*grid_shape(c, h, w), h, w)


def heatmap_steps(store: Store, state: ViewState) -> str:
    """The steps a heatmap sums: every complete step up to the state's."""
    r = run_for(store, state.run, state.pair, state.mode)
    return format_ints([s for s in r.steps if s <= state.step])


def _grid(store: Store, state: ViewState) -> np.ndarray:
    color = ColorSpec(**state.color)
    style = GridStyle(average=state.average or None, plain=True)  # the viewer's page labels the grid
    pick = dict(blocks=state.block, steps=str(state.step), images=str(state.image), guidance=state.guidance,
                channels=str(state.channel) if state.channel >= 0 else "", which=state.which)
    if not (state.pair and state.mode == "diff"):
        return render_image(store, Pick(run=run_for(store, state.run, state.pair, state.mode).name, **pick), color, style)
    sel = select_pair(store, Pick(**pick), pair=state.pair)
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
    ranges = AutoRanges(color)
    where = dict(step=item.step, image=item.image, guidance=item.guidance)
    if ranges.first_pass:
        ranges.add(maps, **where)
    pixels = colorize(maps, color, minmax=ranges.minmax(maps, **where))
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


def _final(store: Store, state: ViewState) -> np.ndarray:
    if not (state.pair and state.mode == "diff"):
        return run_for(store, state.run, state.pair, state.mode).image(state.image)
    base, layered = (r.image(state.image) for r in store.pair(state.pair))
    if base.shape != layered.shape:
        raise SelectionError("the final images of the pair differ in size")
    # diff's final-diff-norm: |layered - base| stretched so that the largest difference is white
    d = np.abs(layered.astype(np.int16) - base.astype(np.int16)).astype(np.uint8)
    top = int(d.max())
    return ((d.astype(np.uint32) * 255 + top // 2) // top).astype(np.uint8) if top else d

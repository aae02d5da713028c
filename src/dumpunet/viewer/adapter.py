"""Draw one view state as an image array, with the analyzer's own functions.

The one entry point, :func:`draw`, returns exactly the pixels the matching ``dumpunet``
command (:meth:`ViewState.command`) writes, so a view and its downloaded PNG and CLI render
agree. Grids are :func:`dumpunet.analyzer.render.render_image` (a pair's difference, or two
stores' (``minus``): the same :func:`~dumpunet.analyzer.render.draw_grid` on a
:class:`~dumpunet.analyzer.selection.DiffSelection`); attention grids are
:func:`~dumpunet.analyzer.attention_grids.attention_grid`, heatmaps :mod:`.heatmap`'s (their
differences, of a pair or two stores, the same functions given the runs to subtract: ``attention
--pair`` / ``attention A B``), final-image differences and the summary chart :mod:`.diff`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dumpunet.analyzer.attention_diff import compare_runs
from dumpunet.analyzer.attention_grids import attention_grid
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.analyzer.diff import final_difference, summary_chart, summary_rows
from dumpunet.analyzer.grid import grid_shape
from dumpunet.analyzer.heatmap import (
    difference_overlay,
    heatmap_difference,
    overlay,
    query_map,
    word_heatmap,
)
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

def draw(store: Store, state: ViewState, minus: Store | None = None) -> np.ndarray:
    """Return the picture of a resolved state: uint8 ``[H, W]`` (White/Black grids) or ``[H, W, 3]``.

    ``minus`` is the store that ``state.minus`` names (the server's list holds it).
    """
    if (state.minus >= 0) != (minus is not None):
        raise SelectionError("the difference of two stores needs the store to subtract (and only then)")
    if state.view == "grid":
        return _grid(store, state, minus)
    if state.view == "attention":
        return _attention(store, state, minus)
    if state.view in ("heatmap", "query"):
        return _overlay(store, state, minus)
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


def _compared(store: Store, state: ViewState, minus: Store | None) -> dict[str, Any]:
    """The difference arguments of the analyzer's attention and heatmap functions: a pair's, two stores', or none."""
    if minus is not None:
        return {"base": minus}
    if state.pair and state.mode == "diff":
        return {"pair": state.pair}
    return {}


def _attention(store: Store, state: ViewState, minus: Store | None) -> np.ndarray:
    """The plain heads x tokens grid: :func:`~dumpunet.analyzer.attention_grids.attention_grid`, as ``attention --plain``."""
    compared = _compared(store, state, minus)
    run = None if "pair" in compared else run_for(store, state.run, state.pair, state.mode).name
    pick = Pick(run=run, blocks=state.layer, steps=str(state.step), images=str(state.image), guidance=state.guidance)
    return attention_grid(store, pick, ColorSpec(**state.color), tokens=str(state.token) if state.token >= 0 else "",
                          heads=state.head if state.head.isdigit() else "",
                          average="mean" if state.head == "mean" else None, **compared)


def _overlay(store: Store, state: ViewState, minus: Store | None) -> np.ndarray:
    r = run_for(store, state.run, state.pair, state.mode)
    pick = Pick(run=r.name, blocks=state.layers, steps=heatmap_steps(store, state), images=str(state.image),
                guidance=state.guidance)
    if state.view == "heatmap" and state.token < 0:
        raise SelectionError("choose a token of the prompt for the word heatmap")
    what = {"word": str(state.token)} if state.view == "heatmap" else {"query": (state.qx, state.qy)}
    compared = _compared(store, state, minus)
    if compared:  # heatmap --pair / heatmap A B: the difference of the summed attention, in diff's colours
        runs = compare_runs(store, Pick(run=None if "pair" in compared else r.name), **compared)
        return difference_overlay(r.image(state.image), heatmap_difference(runs, pick, **what), alpha=state.alpha)
    heat = word_heatmap(store, what["word"], pick) if "word" in what else query_map(store, what["query"], pick)
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

"""The heads x tokens view of recorded attention: one PNG per (layer, step, image, guidance half).

For a cross-attention layer (``IN04.attn2``), row *h* column *t* is the spatial map of how much
head *h* attends to token *t* (the ``qk`` probabilities of every query pixel, laid out at the
layer's resolution). Column headers are the decoded tokens, row headers the head index. Maps are
coloured with the analyzer's engine (:class:`~dumpunet.analyzer.color.spec.ColorSpec`); the
default is render's: Custom / Auto [0,1] / HSL, H = (2+v)/3 (blue = little attention, magenta,
red = much), so a colour reads the same in every command (the original extension recommended
H = (2-2*v)/3 for attention; pass it as ``h`` to get it).

What one Auto range spans is planned as for render and diff (:mod:`.scope`): ``head`` (the
default) one range per head row, so a row answers "which token does this head look at" (the
token with the larger attention is the redder tile); ``channel`` each tile on its own (the
original's behaviour: every tile stretched to its own min/max), ``block`` the whole layer grid, ``step`` every selected layer of the step (per
image and guidance half), ``run`` everything selected.

Self-attention layers (``OUT11.attn1``) show, per head, where the stored query pixel nearest to
``query`` (x, y as fractions of the image) attends; a labelled grid marks that pixel on every tile
with heatmap's cross-hair (the manifest's ``marker``, in map pixels). ``feature="k"`` shows each head's keys
(rows = tokens, columns = head dims); ``feature="vqk"`` each head's output channels.

``average`` reduces the heads to one map, as the original's "averaged map" did, with its
definitions (:func:`~dumpunet.analyzer.reduce.channel_average`: ``mean``; ``1-norm`` and
``2-norm`` divided by the number of heads): qk one map per token, k one map, and vqk one map
over all its channels (heads x head dims, the original's V*Q*K channel average).

A grid is labelled by default: a title strip saying what it shows and how it is coloured, with
a line naming the Auto scope and its ranges (``range per head row: h0 0.0102 to 0.0164, ...``),
and below it a colour bar (grid_labels' :func:`~dumpunet.analyzer.grid_labels.frame`); with
scope ``head`` the bar runs from "row min" to "row max". ``plain`` leaves the headed grid alone.

``aggregate="resolution"`` (prompt-to-prompt's aggregate): per map size, the cross-attention
layers of that size averaged over their heads and then over the layers, one row of token maps.

``heads`` keeps some heads (one row each). The difference of two runs (``pair``: a pair's
``layered - base``; ``base``: another store's run, as ``diff A B``) is drawn the same way from
``run - base`` in float32 (:mod:`.attention_diff` checks that the runs compare; :mod:`.attention_maps`
reads the maps of a run or of a difference), in diff's
colours by default; its files start with ``diff-``. :func:`attention_grid` is one plain grid in
memory, the viewer's attention view, drawn by the same functions as the files.

File names: ``{layer}-step{step:03}-img{image}-{guidance}[-tok-{tokens}][-query-x{x}-y{y}]-{feature}[-avg-{kind}]-{colorization}.png``
(an aggregate: ``res{h}x{w}`` in place of the layer, ``-aggregate`` after the feature, and a ``.npy``
of its maps beside it): the tokens, the query pixel and the average are in the name, so ``--tokens girl`` and then
``--tokens hair`` (or two averages) into one folder keep both (tokens as
:func:`~dumpunet.analyzer.output.text_part` writes them).
Layers are picked by ``Pick.blocks`` (the CLI's ``--blocks``, or ``--layers``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from dumpunet.analyzer.attention_diff import compare_runs
from dumpunet.analyzer.attention_maps import GridItem, grid_maps
from dumpunet.analyzer.color.colorize import colorize
from dumpunet.analyzer.color.spec import ATTENTION_COLOR, DIFF_COLOR, ColorSpec
from dumpunet.analyzer.grid import tile
from dumpunet.analyzer.grid_labels import bar_info, bar_range, colour_bar, frame, number
from dumpunet.analyzer.heatmap import by_resolution, check_point, mark_point, nearest_query
from dumpunet.analyzer.labels import paste, text_image
from dumpunet.analyzer.output import OutputFolder, WrittenFile, name_part, text_part
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.png import encode_png, resolve_encoder
from dumpunet.analyzer.pool import check_jobs, kernel_lock, progress_bar, run_parallel
from dumpunet.analyzer.reduce import AVERAGES, average_label
from dumpunet.analyzer.scope import AutoRanges, json_range
from dumpunet.analyzer.selection import select_attention, store_label
from dumpunet.analyzer.tensor_files import array_file
from dumpunet.analyzer.style import attention_scale as tile_scale
from dumpunet.analyzer.style import check_scale
from dumpunet.errors import OptionError, SelectionError
from dumpunet.store import Run, Store, open_store

__all__ = ["AGGREGATES", "ATTENTION_COLOR", "attention_grid", "render_attention", "tile_scale"]

AGGREGATES = ("resolution",)
"""What ``aggregate`` may average: ``resolution``, the cross-attention layers of one map size."""

def _framed(grid: np.ndarray, rows: int, cols: int, cell: tuple[int, int], row_labels: list[str], col_labels: list[str]) -> np.ndarray:
    """Add a header band of (vertical) column labels and a left band of row labels."""
    col_glyphs = [text_image(t, vertical=True) for t in col_labels]
    row_glyphs = [text_image(t) for t in row_labels]
    top = max((g.shape[0] for g in col_glyphs), default=0)
    left = max((g.shape[1] for g in row_glyphs), default=0)
    shape = (top + grid.shape[0], left + grid.shape[1], *grid.shape[2:])
    canvas = np.zeros(shape, np.uint8)
    canvas[top:, left:] = grid
    ch, cw = cell
    for c, g in enumerate(col_glyphs):
        x = left + c * (cw + 1) + max(0, (cw - g.shape[1]) // 2)
        paste(canvas, g, top - g.shape[0], x)
    for r, g in enumerate(row_glyphs):
        y = top + r * (ch + 1) + max(0, (ch - g.shape[0]) // 2)
        paste(canvas, g, y, left - g.shape[1])
    return canvas


def render_attention(
    store: Store | str | os.PathLike[str],
    pick: Pick = Pick(),
    color: ColorSpec | None = None,
    *,
    out: str | os.PathLike[str],
    tokens: str = "",
    feature: str = "qk",
    query: Sequence[float] | None = None,
    scale: int | None = None,
    heads: str = "",
    average: str | None = None,
    aggregate: str | None = None,
    plain: bool = False,
    pair: str | None = None,
    base: Store | str | os.PathLike[str] | None = None,
    base_run: str | None = None,
    png_encoder: str | None = None,
    progress: bool = True,
    jobs: int | None = None,
) -> list[WrittenFile]:
    """Render heads x tokens grids of the attention layers ``pick`` selects; return the written files.

    ``pick.blocks`` names layers or blocks; ``channels`` and ``which`` do not apply. ``heads``
    keeps some heads (``"0"``, ``"0-3"``; empty: all). ``color`` defaults to
    :data:`~dumpunet.analyzer.color.spec.ATTENTION_COLOR`.

    ``pair`` (a pair's label) or ``base`` (another store; ``base_run`` its run) draw the
    difference of two runs instead, as :func:`~dumpunet.analyzer.diff.diff` draws block outputs:
    ``layered - base`` of the pair, or ``pick.run`` of ``store`` minus the base store's run
    (:func:`~dumpunet.analyzer.attention_diff.compare_runs` checks that they compare), in float32,
    before any head average; ``color`` then defaults to diff's
    :data:`~dumpunet.analyzer.color.spec.DIFF_COLOR` (blue-white-red, white = no change). File
    names start with ``diff-``, titles name both runs, and the manifest the base.

    A grid is labelled (:func:`_legend`): a title strip (store, run, layer, step, image, half,
    what the tiles show, the colorization in words, and the Auto scope with its ranges, e.g.
    ``range per head row: h0 0.0102 to 0.0164, ...``) above it, a colour bar below it. ``plain``
    writes the grid alone, with its head and token headers (as before labels existed).

    ``jobs``: threads reading the maps, then drawing, encoding and writing one grid at a time
    (default: every CPU, as :func:`~dumpunet.analyzer.render.render`); the files do not depend on
    the count.

    ``aggregate="resolution"``: instead of one grid per layer, one row per map size of the
    selected cross-attention layers (SD1: 64x64, 32x32, 16x16, 8x8), each token's map the mean of
    the layers' head means (no resampling: only layers of one size are averaged), as
    prompt-to-prompt's ``aggregate_attention``; files ``res{h}x{w}-step…-qk-aggregate-….png``, each
    with its maps ``[token, h, w]`` as float32 ``.npy`` of the same stem.

    Examples
    --------
    >>> render_attention("girl.zarr", Pick(blocks="IN04-OUT08", steps="1,5,10"), tokens="pink,hair",
    ...                  out="attn")  # doctest: +SKIP
    >>> render_attention("girl.zarr", Pick(steps="20"), aggregate="resolution", out="p2p")  # doctest: +SKIP
    """
    if aggregate is not None:
        if aggregate not in AGGREGATES:
            raise OptionError(f"unknown aggregate {aggregate!r} (valid: {', '.join(AGGREGATES)})")
        if feature != "qk" or average is not None or query is not None:
            raise OptionError("aggregate averages the cross-attention probabilities over layers and heads: "
                              "it takes no feature other than qk, no head average and no query")
    jobs = check_jobs(jobs)
    st, sel, compared, color, query = _prepare(store, pick, color, scale=scale, query=query, average=average,
                                               pair=pair, base=base, base_run=base_run)
    layer_list = sel.layers
    r = sel.run
    if aggregate is not None:
        layer_list = [name for name in layer_list if r.layer_info(name).cross_attention]
        if not layer_list:
            raise SelectionError(f"no cross-attention layer matches {pick.blocks!r}: an aggregate averages cross-attention layers")
    elif query is None:  # self-attention maps need a query pixel to show
        layer_list = [name for name in layer_list if ".attn1" not in name]
        if not layer_list:
            raise SelectionError(f"only self-attention layers match {pick.blocks!r}: give --query x,y to choose the query pixel")
    if compared is not None:
        compared.check(layer_list, sel.steps, feature)
    against = compared.base if compared is not None else None
    encoder = resolve_encoder(png_encoder)
    output = OutputFolder(out)
    if aggregate is not None:
        groups = by_resolution(r, layer_list)
        items = [GridItem(f"res{h}x{w}", s, i, g, tuple(group))
                 for s in sel.steps for (h, w), group in groups.items() for i in sel.images for g in sel.halves]
    else:
        items = [GridItem(layer, s, i, g) for s, layer, i, g in sel.items() if layer in layer_list]
    # Read and check everything first (on the pool), so a bad token or a missing step writes nothing.
    lock = kernel_lock()
    read: list[tuple[GridItem, tuple]] = []  # type: ignore[type-arg]
    run_parallel(items, lambda item: (item, grid_maps(r, item, feature, tokens, query, average, lock, heads, against)),
                 jobs=jobs, done=read)
    grids = dict(read)
    ranges = AutoRanges(color, rows=True)
    if ranges.first_pass:
        for item, g in grids.items():
            ranges.add(np.ascontiguousarray(g[0]), step=item.step, image=item.image, guidance=item.guidance)
    which = _which_part(tokens, query)

    def picture(item: GridItem, maps: np.ndarray, rows: int, cols: int, row_labels: list[str],
                col_labels: list[str]) -> tuple[np.ndarray, dict[str, Any], str]:
        """One grid's pixels, manifest entry and file stem (colours, tiles and bars are numba kernels)."""
        h, w = maps.shape[1:]
        k = tile_scale(h, w, scale)
        minmax = ranges.minmax(maps, step=item.step, image=item.image, guidance=item.guidance, rows=rows)
        marker = _query_marker(r, item, feature, query) if not plain else None
        grid = _plain_grid(maps, rows, cols, row_labels, col_labels, color, minmax, k, marker)
        avg = f"-{average_label(average)}" if average is not None else ("-aggregate" if item.layers else "")
        stem = (f"{'diff-' if compared else ''}{name_part(item.layer, 'layer')}-step{item.step:03d}-img{item.image}-"
                f"{item.guidance}{which}-{feature}{avg}")
        entry = {
            "kind": "attention-aggregate" if item.layers else "attention", "store": str(st.path), "run": r.name,
            "layer": item.layer, "step": item.step, "image": item.image, "guidance": item.guidance, "feature": feature,
            "average": average, "rows": row_labels, "columns": col_labels, "scale": k, "color": color.to_json(),
            "plain": plain,
        }
        if heads:
            entry["heads"] = heads
        if compared is not None:
            entry.update(kind=f"{entry['kind']}-difference", **compared.describe())
        if item.layers:
            entry.update(resolution=[h, w], layers=list(item.layers))
        if marker is not None:
            entry["marker"] = list(marker)
        if ranges.shared:
            entry["range"] = json_range(minmax)
        elif ranges.per_row:  # one [min, max] per row, in row order
            entry["ranges"] = [json_range(tuple(minmax[i * cols])) for i in range(rows)]
        if not plain:
            head_rows = average is None and not item.layers and feature != "k"  # else one row that is no head
            scope, bar_pixels, entry["colorbar"] = _legend(color, minmax, rows, cols, row_labels, head_rows)
            lines = _title(st, r, item, feature, average, k, color, compared.label if compared else None) + [scope]
            entry.update(title=lines, legend=scope)
            grid = frame(grid, lines=lines, bar=bar_pixels)[0]
        return grid, entry, stem

    def draw(pair: tuple[GridItem, tuple]) -> list[WrittenFile]:  # type: ignore[type-arg]
        item, (maps, rows, cols, row_labels, col_labels) = pair
        maps = np.ascontiguousarray(maps)
        with lock:  # pool.kernel_lock: the kernels take turns where numba's threading layer needs it
            grid, entry, stem = picture(item, maps, rows, cols, row_labels, col_labels)
        written = [output.write(f"{stem}-{color.slug()}.png", encode_png(grid, encoder=encoder), entry)]
        if item.layers:  # the averaged maps themselves
            written.append(output.write(f"{stem}-{color.slug()}.npy", array_file("npy", {"qk": maps}, {}), {
                **entry, "kind": "attention-aggregate-maps", "dims": ["token", "y", "x"], "dtype": "<f4",
                "shape": list(maps.shape)}))
        return written

    batches: list[list[WrittenFile]] = []
    with progress_bar(len(items), progress, unit="png", desc="attention") as bar, output:
        run_parallel(grids.items(), draw, jobs=jobs, done=batches, on_done=lambda _: bar.update(1))
    return [f for batch in batches for f in batch]


def _prepare(store: Store | str | os.PathLike[str], pick: Pick, color: ColorSpec | None, *, scale: int | None,
             query: Sequence[float] | None, average: str | None, pair: str | None,
             base: Store | str | os.PathLike[str] | None, base_run: str | None):
    """Check the options, open the store and select; return (store, selection, compared runs or None, colour, query)."""
    if color is not None and color.pca:
        raise OptionError("method PCA colours block features; attention maps take White/Black, Red/Blue or Custom")
    if average is not None and average not in AVERAGES:
        raise OptionError(f"unknown head average {average!r} (valid: {', '.join(AVERAGES)})")
    if scale is not None:
        check_scale(scale)
    if query is not None:
        query = check_point(query)
    st = store if isinstance(store, Store) else open_store(store)
    compared = None
    if pair is not None or base is not None or base_run is not None:
        compared = compare_runs(st, pick, pair=pair, base=base, base_run=base_run)
        pick = replace(pick, run=compared.run.name)
    if color is None:
        color = DIFF_COLOR if compared is not None else ATTENTION_COLOR
    return st, select_attention(st, pick, "attention"), compared, color, query


def _plain_grid(maps: np.ndarray, rows: int, cols: int, row_labels: list[str], col_labels: list[str],
                color: ColorSpec, minmax: Any, k: int, marker: tuple[int, int] | None = None) -> np.ndarray:
    """The coloured tiles, enlarged ``k`` times, (marked at ``marker``), under their head and token headers."""
    h, w = maps.shape[1:]
    tiles = tile(colorize(maps, color, minmax=minmax), cols, rows, scale=k)
    if marker is not None:  # every tile marks the query pixel it shows
        _mark_tiles(tiles, rows, cols, (h, w), k, marker)
    return _framed(tiles, rows, cols, (h * k, w * k), row_labels, col_labels)


def attention_grid(
    store: Store | str | os.PathLike[str],
    pick: Pick,
    color: ColorSpec | None = None,
    *,
    tokens: str = "",
    heads: str = "",
    average: str | None = None,
    query: Sequence[float] | None = None,
    pair: str | None = None,
    base: Store | str | os.PathLike[str] | None = None,
    base_run: str | None = None,
) -> np.ndarray:
    """The pixels of one plain grid: the file :func:`render_attention` writes with ``plain=True`` for a pick of
    one layer, step, image and guidance half (the viewer's attention view). Options as there.

    Examples
    --------
    >>> attention_grid("pair.zarr", Pick(blocks="IN01.attn2", steps="20", images="0", guidance="cond"),
    ...                pair="layered", heads="1").shape  # doctest: +SKIP
    (60, 260, 3)
    """
    _, sel, compared, color, query = _prepare(store, pick, color, scale=None, query=query, average=average,
                                              pair=pair, base=base, base_run=base_run)
    items = list(sel.items())
    if len(items) != 1:
        raise SelectionError(f"one grid is one layer, step, image and guidance half; the pick selects {len(items)}")
    step, layer, image, guidance = items[0]
    if compared is not None:
        compared.check([layer], [step])
    item = GridItem(layer, step, image, guidance)
    maps, rows, cols, row_labels, col_labels = grid_maps(sel.run, item, "qk", tokens, query, average, None, heads,
                                                      compared.base if compared is not None else None)
    maps = np.ascontiguousarray(maps)
    ranges = AutoRanges(color, rows=True)
    where = {"step": step, "image": image, "guidance": guidance}
    if ranges.first_pass:
        ranges.add(maps, **where)
    h, w = maps.shape[1:]
    return _plain_grid(maps, rows, cols, row_labels, col_labels, color, ranges.minmax(maps, **where, rows=rows),
                       tile_scale(h, w))


def _query_marker(r: Run, item: GridItem, feature: str, query: Sequence[float] | None) -> tuple[int, int] | None:
    """The (x, y) map pixel of a self-attention grid's query (the stored one nearest ``query``); None for others."""
    if query is None or item.layers or feature != "qk":
        return None
    info = r.layer_info(item.layer, feature)
    return None if info.cross_attention else nearest_query(info, query)[1]


def _mark_tiles(tiles: np.ndarray, rows: int, cols: int, hw: tuple[int, int], k: int, point: tuple[int, int]) -> None:
    """Draw heatmap's cross-hair (:func:`~dumpunet.analyzer.heatmap.mark_point`) at map pixel ``point``
    on every tile of a tiled grid (tiles ``hw`` enlarged ``k`` times, 1-pixel gaps), in place."""
    th, tw = hw[0] * k, hw[1] * k
    x, y = point[0] * k + k // 2, point[1] * k + k // 2
    for r in range(rows):
        for c in range(cols):
            y0, x0 = r * (th + 1), c * (tw + 1)
            tiles[y0 : y0 + th, x0 : x0 + tw] = mark_point(tiles[y0 : y0 + th, x0 : x0 + tw], x, y)


def _title(st: Store, r: Run, item: GridItem, feature: str, average: str | None, k: int, color: ColorSpec,
           difference: str | None = None) -> list[str]:
    """The title strip's first lines: what the grid shows (``difference``: which runs subtracted), then how it is drawn."""
    call = r.calls.index(item.step, 0)
    t = float(r.calls.timestep[call])
    step = f"step {item.step}" + (f" (t={t:g})" if math.isfinite(t) else "")
    layer = item.layer
    if item.layers:
        h, w = r.layer_info(item.layers[0]).layer_hw
        layer = f"{h}x{w} cross-attention: mean of {', '.join(item.layers)}"
    runs = [f"difference {difference}"] if difference else [store_label(st), f"run {r.name}"]
    first = " | ".join([*runs, layer, step, f"image {item.image}", item.guidance])
    what = {"qk": "rows: heads, columns: tokens", "k": "keys: one tile per head", "vqk": "rows: heads, columns: head dims"}[feature]
    if item.layers:
        what = "each token's attention averaged over the layers and their heads"
    elif average is not None:
        what = f"{average} over heads | {what.split(', ')[-1]}"
    return [first, f"{feature} | {what} | x{k} | {color.words()}"]


def _legend(color: ColorSpec, minmax, rows: int, cols: int, row_labels: list[str],  # noqa: ANN001 - range or [N, 2]
            heads: bool = True):
    """The scope line of the title, the colour bar (:func:`~dumpunet.analyzer.grid_labels.frame`'s) and the manifest's
    ``colorbar``: with scope ``head`` the bar runs from each row's minimum to its maximum and the line lists the rows'
    ranges; otherwise the bar's ends are the range the colours mean (render's :func:`~.grid_labels.bar_range`)."""
    if color.scope == "head":
        per = ", ".join(f"{lab} {number(minmax[i * cols][0])} to {number(minmax[i * cols][1])}"
                        for i, lab in enumerate(row_labels[:rows]))
        return f"range per {'head row' if heads else 'row'}: {per}", colour_bar(color, None, ("row min", "row max")), \
            {"min": None, "max": None, "spans": "head row"}
    info = bar_info(color, minmax)
    if info is None:
        return "no finite value to colour", None, None
    rng = bar_range(color, minmax)
    scope = {"tile": "range per tile (each its own min to max)", "grid": "one range over the grid",
             "step": "one range over the step (this image and half)", "run": "one range over everything selected",
             "fixed": "fixed range"}[info["spans"]]
    if rng is not None:
        scope += f": {number(rng[0])} to {number(rng[1])}"
    return scope, colour_bar(color, rng), info


def _which_part(tokens: str, query: Sequence[float] | None) -> str:
    """The file name part saying which tokens and query pixel a grid shows (empty for the defaults)."""
    part = f"-tok-{text_part(tokens)}" if tokens.strip() else ""
    if query is not None:
        part += f"-query-x{query[0]:g}-y{query[1]:g}"
    return part

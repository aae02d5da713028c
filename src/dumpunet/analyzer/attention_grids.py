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
``query`` (x, y as fractions of the image) attends. ``feature="k"`` shows each head's keys
(rows = tokens, columns = head dims); ``feature="vqk"`` each head's output channels.

``average`` reduces the heads to one map, as the original's "averaged map" did, with its
definitions (:func:`~dumpunet.analyzer.reduce.channel_average`: ``mean``; ``1-norm`` and
``2-norm`` divided by the number of heads): qk one map per token, k one map, and vqk one map
over all its channels (heads x head dims, the original's V*Q*K channel average).

File names: ``{layer}-step{step:03}-img{image}-{guidance}-{feature}[-avg-{kind}]-{colorization}.png``
(``-avg-2norm``: different averages do not overwrite each other).

File names: ``{layer}-step{step:03}-img{image}-{guidance}[-tok-{tokens}][-query-x{x}-y{y}]-{feature}[-avg-{kind}]-{colorization}.png``:
the tokens, the query pixel and the average are in the name, so ``--tokens girl`` and then
``--tokens hair`` (or two averages) into one folder keep both (tokens as
:func:`~dumpunet.analyzer.output.text_part` writes them).
Layers are picked by ``Pick.blocks`` (the CLI's ``--blocks``, or ``--layers``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dumpunet.analyzer.color.colorize import colorize
from dumpunet.analyzer.color.spec import ATTENTION_COLOR, ColorSpec
from dumpunet.analyzer.grid import tile
from dumpunet.analyzer.heatmap import check_point, nearest_query
from dumpunet.analyzer.labels import paste, text_image
from dumpunet.analyzer.output import OutputFolder, WrittenFile, name_part, text_part
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.png import encode_png, resolve_encoder
from dumpunet.analyzer.pool import progress_bar
from dumpunet.analyzer.reduce import AVERAGES, average_label, channel_average
from dumpunet.analyzer.scope import AutoRanges, json_range
from dumpunet.analyzer.selection import select_attention
from dumpunet.analyzer.style import ATTENTION_TILE_TARGET, check_scale
from dumpunet.analyzer.tokens import label, select_tokens
from dumpunet.errors import OptionError, SelectionError
from dumpunet.specs import parse_ints
from dumpunet.store import Run, Store, open_store
from dumpunet.store.schema import TokenRow

__all__ = ["ATTENTION_COLOR", "render_attention"]



@dataclass(frozen=True)
class _Item:
    layer: str
    step: int
    image: int
    guidance: str


def _grids(run: Run, item: _Item, feature: str, tokens: str, query: Sequence[float] | None, average: str | None = None):
    """Return (maps [rows*cols, h, w], rows, cols, row labels, column labels) for one item.

    With ``average``, the heads of each token (qk), the heads (k) or every channel (vqk) are
    reduced to one map by :func:`~dumpunet.analyzer.reduce.channel_average`: one row of tiles.
    """
    data = run.attention(item.layer, item.step, feature=feature, guidance=item.guidance, image=item.image, dtype=np.float32)
    heads = data.shape[0]
    info = run.layer_info(item.layer, feature)
    head_labels = [f"h{i}" for i in range(heads)] if heads > 1 or info.heads != "mean" else ["mean"]
    if average is not None:
        head_labels = [average]
    hw = info.layer_hw
    cross = info.cross_attention
    if feature == "k":
        row = run.token_row(guidance=item.guidance, image=item.image, block=item.layer)
        idx = _token_index(tokens, row, data.shape[1])
        maps = data[:, idx, :]  # [head, token, dim]: one tile per head
        if average is not None:
            maps = channel_average(maps, average)[None]
        return maps, 1, len(maps), [], head_labels
    if feature == "vqk":
        h, w = hw
        maps = data.transpose(0, 2, 1).reshape(heads * data.shape[2], h, w)
        if average is not None:  # the original's V*Q*K average: over all channels (heads x dims)
            return channel_average(maps, average)[None], 1, 1, head_labels, ["all"]
        return maps, heads, data.shape[2], head_labels, [str(d) for d in range(data.shape[2])]
    if not cross:
        if query is None:
            raise SelectionError(f"{item.layer} is a self-attention layer: give --query x,y to choose the query pixel")
        q, (px, py) = nearest_query(info, query)
        maps = data[:, q, :].reshape(heads, *hw)
        if average is not None:
            maps = channel_average(maps, average)[None]
        return maps, len(maps), 1, head_labels, [f"query ({px},{py})"]
    row = run.token_row(guidance=item.guidance, image=item.image, block=item.layer)
    idx = _token_index(tokens, row, data.shape[2])
    per_token = data[:, :, idx].transpose(2, 0, 1).reshape(len(idx), heads, *hw)  # [token, head, h, w]
    if average is not None:
        maps = np.stack([channel_average(x, average) for x in per_token])
    else:
        maps = per_token.transpose(1, 0, 2, 3).reshape(heads * len(idx), *hw)
    names = row.tokens if row is not None else [str(i) for i in range(data.shape[2])]
    return maps, len(maps) // len(idx), len(idx), head_labels, [f"{i}:{label(names[i])}" for i in idx]


def _token_index(spec: str, row: TokenRow | None, n: int) -> list[int]:
    if row is None:  # no tokens recorded (e.g. SDXL's zeroed empty negative prompt): indices only
        return parse_ints(spec, 0, n - 1, noun="token", what="token selection") if spec.strip() else list(range(n))
    idx = select_tokens(spec, list(row.tokens), row.length)
    if not idx:
        raise SelectionError("the prompt has no tokens to show; give token indices, e.g. --tokens 0-76")
    return idx


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
    color: ColorSpec = ATTENTION_COLOR,
    *,
    out: str | os.PathLike[str],
    tokens: str = "",
    feature: str = "qk",
    query: Sequence[float] | None = None,
    scale: int | None = None,
    average: str | None = None,
    png_encoder: str | None = None,
    progress: bool = True,
) -> list[WrittenFile]:
    """Render heads x tokens grids of the attention layers ``pick`` selects; return the written files.

    ``pick.blocks`` names layers or blocks; ``channels`` and ``which`` do not apply.

    Examples
    --------
    >>> render_attention("girl.zarr", Pick(blocks="IN04-OUT08", steps="1,5,10"), tokens="pink,hair",
    ...                  out="attn")  # doctest: +SKIP
    """
    if color.pca:
        raise OptionError("method PCA colours block features; attention maps take White/Black, Red/Blue or Custom")
    if average is not None and average not in AVERAGES:
        raise OptionError(f"unknown head average {average!r} (valid: {', '.join(AVERAGES)})")
    if scale is not None:
        check_scale(scale)
    if query is not None:
        query = check_point(query)
    st = store if isinstance(store, Store) else open_store(store)
    sel = select_attention(st, pick, "attention")
    layer_list = sel.layers
    if query is None:  # self-attention maps need a query pixel to show
        layer_list = [name for name in layer_list if ".attn1" not in name]
        if not layer_list:
            raise SelectionError(f"only self-attention layers match {pick.blocks!r}: give --query x,y to choose the query pixel")
    r = sel.run
    encoder = resolve_encoder(png_encoder)
    output = OutputFolder(out)
    items = [_Item(layer, s, i, g) for s, layer, i, g in sel.items() if layer in layer_list]
    # Read and check everything first, so a bad token or a missing step writes nothing.
    grids = {item: _grids(r, item, feature, tokens, query, average) for item in items}
    ranges = AutoRanges(color, rows=True)
    if ranges.first_pass:
        for item, g in grids.items():
            ranges.add(np.ascontiguousarray(g[0]), step=item.step, image=item.image, guidance=item.guidance)
    which = _which_part(tokens, query)
    written: list[WrittenFile] = []
    with progress_bar(len(items), progress, unit="png", desc="attention") as bar, output:
        for item, (maps, rows, cols, row_labels, col_labels) in grids.items():
            maps = np.ascontiguousarray(maps)
            h, w = maps.shape[1:]
            k = scale or max(1, min(16, math.ceil(ATTENTION_TILE_TARGET / max(1, min(h, w)))))
            minmax = ranges.minmax(maps, step=item.step, image=item.image, guidance=item.guidance, rows=rows)
            pixels = colorize(maps, color, minmax=minmax)
            grid = _framed(tile(pixels, cols, rows, scale=k), rows, cols, (h * k, w * k), row_labels, col_labels)
            avg = f"-{average_label(average)}" if average is not None else ""
            name = f"{name_part(item.layer, 'layer')}-step{item.step:03d}-img{item.image}-{item.guidance}{which}-{feature}{avg}-{color.slug()}.png"
            entry = {
                "kind": "attention", "store": str(st.path), "run": r.name, "layer": item.layer,
                "step": item.step, "image": item.image, "guidance": item.guidance, "feature": feature, "average": average,
                "rows": row_labels, "columns": col_labels, "scale": k, "color": color.to_json(),
            }
            if ranges.shared:
                entry["range"] = json_range(minmax)
            elif ranges.per_row:  # one [min, max] per row, in row order
                entry["ranges"] = [json_range(tuple(minmax[i * cols])) for i in range(rows)]
            written.append(output.write(name, encode_png(grid, encoder=encoder), entry))
            bar.update(1)
    return written


def _which_part(tokens: str, query: Sequence[float] | None) -> str:
    """The file name part saying which tokens and query pixel a grid shows (empty for the defaults)."""
    part = f"-tok-{text_part(tokens)}" if tokens.strip() else ""
    if query is not None:
        part += f"-query-x{query[0]:g}-y{query[1]:g}"
    return part

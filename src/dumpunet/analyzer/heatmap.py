"""Word heatmaps over the image (DAAM-style) and self-attention query maps, computed offline.

Word heatmap: for every chosen cross-attention layer and step, the token's attention
probabilities (summed over the word's sub-tokens, averaged over heads) form a map at the
layer's resolution; each is upsampled (bicubic) to the image size and summed; the sum is
normalized to [0, 1] by its own min and max (as DAAM does). The maps of one resolution are summed
first and upsampled once: the resize is linear, so this is the same sum up to float rounding.

Query map: for a self-attention layer recorded with ``--self-attention``, the row of the
stored query pixel nearest to a chosen point, averaged over heads, treated the same way.

Both read the layers, steps, image and guidance half a :class:`~dumpunet.analyzer.pick.Pick`
selects (``blocks`` names layers or blocks); a map is of one image and one half, the files of
:func:`write_heatmaps` one per word (or their sum), selected image and half: the overlay under a
title strip with a colour bar (:func:`~dumpunet.analyzer.grid_labels.frame`, as render's grids),
colours from :mod:`~dumpunet.analyzer.colormaps`, and the map itself as ``.npy``; a query map's
overlay has a cross-hair at the query pixel (:func:`mark_point`).

The difference of two runs (a pair's, or two stores': :mod:`.attention_diff`) is
:func:`heatmap_difference`, ``run - base`` of the summed attention before normalizing, drawn by
:func:`difference_overlay` in diff's blue-white-red over the run's final image.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from dumpunet.analyzer import colormaps as cmaps
from dumpunet.analyzer.attention_diff import RunPair, compare_runs
from dumpunet.analyzer.color import kernels
from dumpunet.analyzer.color.colorize import colorize
from dumpunet.analyzer.color.float16 import kernel_view
from dumpunet.analyzer.color.spec import DIFF_COLOR
from dumpunet.analyzer.grid_labels import (
    BAR_HEIGHT,
    BAR_WIDTH,
    bar_range,
    colour_bar,
    frame,
    number,
)
from dumpunet.analyzer.output import OutputFolder, WrittenFile, text_part
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.png import encode_png
from dumpunet.analyzer.pool import check_jobs, run_parallel
from dumpunet.analyzer.style import attention_scale
from dumpunet.analyzer.tokens import check_word, select_tokens
from dumpunet.errors import OptionError, SelectionError
from dumpunet.specs import parse_ints
from dumpunet.store import Run, Store, open_store
from dumpunet.store.schema import LayerAttrs


def _upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if m.shape == (h, w):
        return m.astype(np.float32)
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BICUBIC))


def _normalize(acc: np.ndarray) -> np.ndarray:
    lo, hi = float(acc.min()), float(acc.max())
    return (acc - lo) / (hi - lo) if hi > lo else np.zeros_like(acc)


def _layers(store: Store, run: Run, spec: str, cross: bool) -> list[str]:
    kind = ".attn2" if cross else ".attn1"
    layers = [name for name in store.select_layers(spec, run=run.name) if kind in name]
    if not layers:
        what = "cross-attention" if cross else "self-attention (record with --self-attention)"
        raise SelectionError(f"no {what} layer recorded among {spec or 'all layers'!r}")
    return layers


def word_heatmap(store: Store, word: str, pick: Pick = Pick()) -> np.ndarray:
    """Return the word's heatmap ``[H, W]`` in [0, 1] at the image's size, for one image and half.

    Examples
    --------
    >>> heat = dumpunet.heatmap(store, "hair", Pick(steps="1-10"))  # doctest: +SKIP
    >>> heat.shape, float(heat.max())  # doctest: +SKIP
    ((512, 512), 1.0)
    """
    return _normalize(_word_sum(store, word, pick))


def _word_sum(store: Store, word: str, pick: Pick) -> np.ndarray:
    """The word's map before normalizing: attention summed over the picked layers and steps.

    With per-block prompts each layer saw its own prompt: the map sums the layers whose prompt
    holds the word, and the error when none does names every layer's words.
    """
    check_word(word)
    r, image, guidance = _one_map(store, pick)
    found: dict[str, list[int]] = {}
    missing: dict[str, SelectionError] = {}
    for layer in _layers(store, r, pick.blocks, cross=True):
        row = r.token_row(guidance=guidance, image=image, block=layer)
        if row is None:
            raise SelectionError(f"no tokens were recorded for the {guidance} half of {layer}")
        try:
            found[layer] = select_tokens(word, list(row.tokens), row.length)
        except SelectionError as exc:
            missing[layer] = exc
    if not found:
        messages = {str(exc) for exc in missing.values()}
        if len(messages) == 1:  # one prompt for every layer
            raise next(iter(missing.values()))
        raise SelectionError(f"{word.strip()!r} is in no picked layer's prompt: "
                             + "; ".join(f"{layer}: {exc}" for layer, exc in missing.items()))

    def token_map(layer: str) -> Callable[[Blocks, tuple[int, int], np.ndarray], None]:
        idx = np.asarray(r.layer_info(layer).token_columns(found[layer], layer), np.intp)  # --attention-tokens: kept ones only
        return lambda blocks, shape, acc: add_token_mean(blocks, shape, idx, acc)

    return _aggregate(store, r, list(found), token_map, pick.steps, guidance, image)


Blocks = Iterable[tuple[int, np.ndarray]]
"""One attention chunk ``[head, query, token]`` as consecutive blocks of its rows ``[n, token]``, each
with the index of its first row (:meth:`~dumpunet.store.reader.Run.attention_rows`)."""


def add_token_mean(blocks: Blocks, shape: tuple[int, int], tokens: np.ndarray, acc: np.ndarray) -> None:
    """``acc += probs[:, :, tokens].astype(np.float32).sum(axis=-1).mean(axis=0)``, flattened, bit for bit.

    ``blocks`` is one layer's chunk ``probs`` (``shape``: heads, queries) a block of rows at a
    time; ``acc`` float64 with one value per query. Fewer than 8 tokens (a word's sub-tokens, the
    viewer's one token) go through the kernel :func:`~dumpunet.analyzer.color.kernels.token_rows`,
    which reads only those tokens of the stored values; more are summed by numpy itself.
    """
    heads, queries = shape
    m = np.zeros(queries, np.float32)
    for first, rows in blocks:
        if len(tokens) < 8 and rows.dtype in (np.float16, np.float32, np.float64):
            kernels.token_rows(*kernel_view(rows), tokens, m, first)
        else:  # numpy's pairwise sums, then the heads added in order as the mean adds them
            np.add.at(m, (first + np.arange(len(rows))) % queries, rows[:, tokens].astype(np.float32).sum(axis=-1))
    acc.reshape(-1)[:] += m / np.float32(heads)


def check_point(point: Sequence[float]) -> tuple[float, float]:
    """Return the query point ``(x, y)`` if both are finite fractions of the image in [0, 1]; else an :class:`OptionError`.

    >>> check_point((0.5, 1))
    (0.5, 1.0)
    """
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError):
        raise OptionError(f"a query point is x,y as fractions of the image, got {point!r}") from None
    if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= 1 and 0 <= y <= 1):
        raise OptionError(f"query point ({x}, {y}) must be fractions of the image in [0, 1]")
    return x, y


def check_alpha(alpha: float) -> float:
    """Return the heatmap opacity ``alpha`` if it is a finite number in [0, 1]; else an :class:`OptionError`."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or not 0 <= alpha <= 1:
        raise OptionError(f"alpha must be a number between 0 and 1, got {alpha!r}")
    return float(alpha)


def nearest_query(info: LayerAttrs, point: Sequence[float]) -> tuple[int, tuple[int, int]]:
    """Index on the ``query`` axis, and (x, y) pixel, of the stored query nearest ``point`` (fractions)."""
    h, w = info.layer_hw
    rows, cols = info.queries
    qy = int(np.argmin([abs((ry + 0.5) / h - point[1]) for ry in rows]))
    qx = int(np.argmin([abs((cx + 0.5) / w - point[0]) for cx in cols]))
    return qy * len(cols) + qx, (cols[qx], rows[qy])


def query_map(store: Store, point: Sequence[float], pick: Pick = Pick()) -> np.ndarray:
    """Return where the query pixel nearest ``point`` (x, y as fractions) attends, ``[H, W]`` in [0, 1]."""
    return _normalize(_query_sum(store, point, pick))


def _query_sum(store: Store, point: Sequence[float], pick: Pick) -> np.ndarray:
    """The query pixel's map before normalizing: attention summed over the picked layers and steps."""
    x, y = check_point(point)
    r, image, guidance = _one_map(store, pick)

    def pixel_map(layer: str) -> Callable[[Blocks, tuple[int, int], np.ndarray], None]:
        q, _ = nearest_query(r.layer_info(layer), (x, y))

        def add(blocks: Blocks, shape: tuple[int, int], acc: np.ndarray) -> None:
            heads, queries = shape
            wanted = {h * queries + q: h for h in range(heads)}  # the query's row of each head
            picked: list[np.ndarray | None] = [None] * heads
            for first, rows in blocks:
                for row, h in wanted.items():
                    if first <= row < first + len(rows):
                        picked[h] = rows[row - first].copy()
            acc += np.stack(picked).astype(np.float32).mean(axis=0).reshape(acc.shape)  # type: ignore[arg-type]

        return add

    return _aggregate(store, r, _layers(store, r, pick.blocks, cross=False), pixel_map, pick.steps, guidance, image)


def heatmap_difference(runs: RunPair, pick: Pick, *, word: str | None = None,
                       query: Sequence[float] | None = None) -> np.ndarray:
    """``run - base`` of a word's (or query pixel's) summed attention, ``[H, W]`` float32, not normalized.

    Both maps are summed as :func:`word_heatmap` sums them (each run finds the word in its own
    prompt), over the same layers and steps, which both runs must hold (:meth:`RunPair.check`).
    """
    if (word is None) == (query is None):
        raise OptionError("give exactly one of word and query")
    r, _, _ = _one_map(runs.store, replace(pick, run=runs.run.name))
    layers = _layers(runs.store, r, pick.blocks, cross=word is not None)
    runs.check(layers, runs.store.select_steps(pick.steps, run=r.name))
    base_layers = _layers(runs.base_store, runs.base, pick.blocks, cross=word is not None)
    if base_layers != layers:
        raise SelectionError(f"{runs.runs} differ: {pick.blocks or 'all layers'!r} picks layers {', '.join(layers)} in "
                             f"{runs.desc} but {', '.join(base_layers)} in {runs.base_desc}")

    def total(store: Store, run: Run) -> np.ndarray:
        one = replace(pick, run=run.name)
        return _word_sum(store, word, one) if word is not None else _query_sum(store, query, one)  # type: ignore[arg-type]

    a = total(runs.store, runs.run)
    try:
        b = total(runs.base_store, runs.base)
    except SelectionError as exc:
        raise SelectionError(f"base run {runs.base_desc}: {exc}") from None
    if a.shape != b.shape:
        raise SelectionError(f"{runs.runs} differ: the images are {a.shape[1]}x{a.shape[0]} in {runs.desc} but "
                             f"{b.shape[1]}x{b.shape[0]} in {runs.base_desc}")
    return (a - b).astype(np.float32)


def difference_overlay(image: np.ndarray, d: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend a difference map over an uint8 RGB image in diff's colours (blue-white-red over ``[-m, m]``,
    ``m`` the largest ``|d|``: white is no change): ``(1-a)·image + a·color``."""
    colours = colorize(d[None].astype(np.float32), DIFF_COLOR, minmax=difference_range(d))[0]
    return _blend(image, colours, alpha)


def difference_range(d: np.ndarray) -> tuple[float, float]:
    """The range a difference map is coloured over: ``(min, max)``, made symmetric by the colours' autosym."""
    return float(d.min()), float(d.max())


def _one_map(store: Store, pick: Pick) -> tuple[Run, int, str]:
    """The run, image and guidance half of a pick that must select one of each."""
    pick.refuse("a heatmap", "channels", "which")
    r = store.run(pick.run)
    images = parse_ints(pick.images, 0, r.n_images - 1, noun="image", what="image spec")
    if len(images) != 1 or pick.halves is None:
        raise SelectionError(
            f"a heatmap is of one image and one guidance half; the pick selects images {pick.images or 'all'!r} "
            f"of {r.n_images} and guidance {pick.guidance!r}"
        )
    r.guidance_index(pick.guidance)
    return r, images[0], pick.guidance


def by_resolution(run: Run, layers: Sequence[str]) -> dict[tuple[int, int], list[str]]:
    """The ``layers`` grouped by the size ``(h, w)`` of their maps, in order of first appearance.

    The one grouping of layers by resolution: heatmaps sum each group before upsampling it once,
    ``attention --aggregate resolution`` averages each group (no resampling).
    """
    groups: dict[tuple[int, int], list[str]] = {}
    for layer in layers:
        h, w = run.layer_info(layer).layer_hw
        groups.setdefault((int(h), int(w)), []).append(layer)
    return groups


READ_BLOCK = 512 << 10
"""Bytes of the buffer that attention chunks are read through: about a core's L2 cache."""


def _aggregate(
    store: Store,
    r: Run,
    layers: list[str],
    pick: Callable[[str], Callable[[np.ndarray, np.ndarray], None]],
    steps: str,
    guidance: str,
    image: int,
) -> np.ndarray:
    """Sum the maps ``pick(layer)`` makes over layers and steps, each upsampled to the image.

    ``pick(layer)(blocks, (heads, queries), acc)`` adds one step's map to ``acc`` (float64, the
    layer's size), from the probabilities in their stored dtype, casting only what it keeps. Each
    chunk comes as blocks of its rows read in turn into one small buffer
    (:meth:`~dumpunet.store.reader.Run.attention_rows`): a heatmap of SD1.5 at 512 px reads 200 MB
    of chunks, and whole-chunk reads moved each byte three times through memory.
    The maps of one resolution are summed before one upsampling per resolution: Pillow's bicubic
    resize of a float ("F") image is a fixed weighted sum of input pixels without clipping, so
    it is linear and the result equals upsampling every map (up to float rounding; a test ties
    them), at a few resizes instead of one per layer and step.
    """
    size = (int(r.info.height or 0), int(r.info.width or 0))
    step_list = store.select_steps(steps, run=r.name)
    scratch = np.empty(READ_BLOCK, np.uint8)
    sums: dict[tuple[int, int], np.ndarray] = {}
    for hw, group in by_resolution(r, layers).items():
        acc = sums[hw] = np.zeros(hw, np.float64)
        for layer in group:
            add = pick(layer)
            shape = tuple(r.attention_array(layer).chunks[3:5])
            for step in step_list:
                add(r.attention_rows(layer, step, guidance=guidance, image=image, scratch=scratch), shape, acc)
    out = np.zeros(size, np.float32)
    for m in sums.values():
        out += _upsample(m, size)
    return out


colormap = cmaps.colormap
"""Values in [0, 1] to uint8 RGB (:func:`dumpunet.analyzer.colormaps.colormap`), Turbo by default."""


def overlay(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5,
            colormap: str = cmaps.DEFAULT_COLORMAP) -> np.ndarray:
    """Blend the colormapped heatmap over an uint8 RGB image: ``(1-a)·image + a·color``.

    Turbo (the default) colours and blends in one kernel pass
    (:func:`~dumpunet.analyzer.color.kernels.turbo_overlay`, the same bytes as the two numpy
    steps, which the other colour maps and a map holding NaN take).
    """
    heat = np.asarray(heat)
    if (colormap != "turbo" or type(alpha) not in (float, int) or image.dtype != np.uint8 or heat.ndim != 2
            or image.shape != (*heat.shape, 3) or heat.dtype != np.float32 or np.isnan(heat).any()):
        return _blend(image, cmaps.colormap(heat, colormap), alpha)
    out = np.empty(image.shape, np.uint8)
    kernels.turbo_overlay(np.ascontiguousarray(heat).reshape(-1), np.ascontiguousarray(image).reshape(-1, 3),
                          cmaps.TURBO, np.float32(1.0 - alpha), np.float32(alpha), out.reshape(-1, 3))
    return out


def _blend(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    if image.shape[:2] != colours.shape[:2]:
        raise SelectionError(f"heatmap {colours.shape[:2]} and image {image.shape[:2]} differ in size")
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def query_pixel(point: Sequence[float], size: tuple[int, int]) -> tuple[int, int]:
    """The ``(x, y)`` pixel of an image of ``size`` (h, w) that holds the point (fractions of the image).

    >>> query_pixel((0.5, 1.0), (16, 24))
    (12, 15)
    """
    h, w = size
    return min(w - 1, int(point[0] * w)), min(h - 1, int(point[1] * h))


def mark_point(picture: np.ndarray, x: int, y: int) -> np.ndarray:
    """A copy of an uint8 picture (RGB or gray) with a cross-hair at pixel ``(x, y)``: four white arms from
    2 to ``max(4, min(h, w) // 16)`` pixels off the point, outlined in black, so the marker shows
    on any colour while the pixel and its 3x3 neighbourhood stay as they are. Query maps mark
    their query pixel with it (and attention's self-attention grids, on each tile).
    """
    out = picture.copy()
    h, w = out.shape[:2]
    arm = max(4, min(h, w) // 16)

    def put(along: int, across: int, colour: int) -> None:
        for sign in (-1, 1):
            for cy, cx in ((y + across, x + sign * along), (y + sign * along, x + across)):
                if 0 <= cy < h and 0 <= cx < w:
                    out[cy, cx] = colour

    for d in range(2, arm + 2):  # the outline: both sides of each arm, and its end
        for across in (-1, 1):
            put(d, across, 0)
    put(arm + 1, 0, 0)
    for d in range(2, arm + 1):
        put(d, 0, 255)
    return out


def labelled_overlay(overlaid: np.ndarray, *, lines: list[str], value_range: tuple[float, float],
                     colormap: str = cmaps.DEFAULT_COLORMAP) -> np.ndarray:
    """An overlay with title ``lines`` above it and below it the colour bar of the values ``value_range`` spans.

    The overlay's pixels are copied unchanged (grid_labels' :func:`~dumpunet.analyzer.grid_labels.frame`).
    """
    bar = np.repeat(cmaps.colormap(np.linspace(0.0, 1.0, BAR_WIDTH), colormap)[None], BAR_HEIGHT, axis=0)
    return frame(overlaid, lines=lines, bar=(bar, number(value_range[0]), number(value_range[1])))[0]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, np.float32), allow_pickle=False)
    return buf.getvalue()


def prompt_of(run: Run, guidance: str) -> str:
    """The prompt a run's guidance half saw (the negative prompt for ``uncond``), as recorded."""
    return run.info.negative_prompt if guidance == "uncond" else run.info.prompt


def run_note(store: Store, pick: Pick) -> str | None:
    """One line naming the run (and its prompts) a heatmap of a pair or sweep store uses; None for a one-run store."""
    if len(store.run_names) < 2:
        return None
    r = store.run(pick.run)
    how = "chosen with --run" if pick.run else f"the default of {', '.join(store.run_names)}; --run picks another"
    prompts = "; ".join(f"{g} {prompt_of(r, g)!r}" for g in (pick.halves or r.guidance_labels))
    return f"heatmap: run {r.name} ({how}), prompt {prompts}"


def write_heatmaps(
    store: Store | str | os.PathLike[str],
    pick: Pick = Pick(),
    *,
    out: str | os.PathLike[str],
    word: str | None = None,
    query: Sequence[float] | None = None,
    alpha: float = 0.5,
    merge: bool = False,
    colormap: str = cmaps.DEFAULT_COLORMAP,
    plain: bool = False,
    pair: str | None = None,
    base: Store | str | os.PathLike[str] | None = None,
    base_run: str | None = None,
    jobs: int | None = None,
) -> list[WrittenFile]:
    """Write the overlays of the word's heatmaps (or the query pixel's map) on the final image, with their maps.

    Give exactly one of ``word`` and ``query``. Per selected image and guidance half, one file
    per comma-separated part of ``word`` (``merge``: one of their sum), or one for ``query``:
    ``heatmap-{word}-img{i}-{guidance}.png`` (the word as
    :func:`~dumpunet.analyzer.output.text_part` writes it) or ``querymap-x{x}-y{y}-img{i}-{guidance}.png``.
    Each PNG has a title strip (the word, run, image, half, layers, steps) and a colour bar whose ends
    are the summed attention's minimum and maximum; a query map's overlay has a cross-hair at the
    query pixel (the manifest's ``marker``, x and y in image pixels); an image under 32 pixels on a
    side is enlarged (nearest neighbour) by the rule that enlarges attention grids' tiles
    (:func:`~dumpunet.analyzer.style.attention_scale`: an 8-pixel image 4 times). Beside it, the map
    itself in [0, 1] as a float32 ``.npy`` of the same stem, at the image's size. ``plain`` writes the
    bare overlay at the image's size (as the viewer shows it: no title, bar or marker). ``jobs``: threads each making one file's map and picture
    (default: every CPU, :mod:`.pool`); all are made before any is written, and the files do not
    depend on the count.

    ``pair`` (a pair's label) or ``base`` (another store; ``base_run`` its run) write the
    difference of two runs instead (:func:`heatmap_difference`: ``run - base`` of the summed
    attention, not normalized), over the run's final image in diff's colours
    (:func:`difference_overlay`; ``colormap`` does not apply); files start with ``diff-``, the
    ``.npy`` holds the difference itself, and the colour bar runs from ``-m`` to ``m``.
    """
    if (word is None) == (query is None):
        raise OptionError("give exactly one of word and query")
    alpha = check_alpha(alpha)
    jobs = check_jobs(jobs)
    if colormap not in cmaps.COLORMAPS:
        raise OptionError(f"unknown colour map {colormap!r}; choose one of {', '.join(cmaps.COLORMAPS)}")
    words: list[str] = []
    if word is not None:
        check_word(word)
        words = [word] if merge else list(dict.fromkeys(part.strip() for part in word.split(",") if part.strip()))
    if query is not None:
        query = check_point(query)
    st = store if isinstance(store, Store) else open_store(store)
    compared = None
    if pair is not None or base is not None or base_run is not None:
        if colormap != cmaps.DEFAULT_COLORMAP:
            raise OptionError("a difference is drawn in diff's colours (blue-white-red); a colour map colours a heatmap")
        compared = compare_runs(st, pick, pair=pair, base=base, base_run=base_run)
    r = compared.run if compared is not None else st.run(pick.run)
    image_list = parse_ints(pick.images, 0, r.n_images - 1, noun="image", what="image spec")
    output = OutputFolder(out)
    tasks = [(i, g, w) for i in image_list for g in pick.halves or r.guidance_labels for w in words or [None]]

    def make(task: tuple[int, str, str | None]) -> list[tuple[str, bytes, dict[str, Any]]]:
        i, g, w = task
        one = replace(pick, run=r.name, images=str(i), guidance=g)
        if w is not None:
            raw = _word_sum(st, w, one) if compared is None else heatmap_difference(compared, one, word=w)
            stem = f"heatmap-{text_part(w)}-img{i}-{g}"
            parts = [p.strip() for p in w.split(",") if p.strip()]
            what = f"word {w!r}" if len(parts) == 1 else f"words {' + '.join(parts)} (summed)"
        else:
            raw = _query_sum(st, query, one) if compared is None else heatmap_difference(compared, one, query=query)
            stem = f"querymap-x{query[0]:.3f}-y{query[1]:.3f}-img{i}-{g}"
            what = f"query pixel x={query[0]:.3f} y={query[1]:.3f} (marked +)"
        kind = "heatmap" if word is not None else "querymap"
        entry = {
            "kind": kind, "store": str(st.path), "run": r.name, "prompt": prompt_of(r, g),
            "word": w, "query": list(query) if query is not None else None, "layers": pick.blocks,
            "steps": pick.steps, "image": i, "guidance": g, "alpha": alpha, "colormap": colormap, "plain": plain,
        }
        layers = f"layers {pick.blocks or 'all'} | steps {pick.steps or 'all'}"
        if compared is None:
            heat = _normalize(raw)
            value_range = (float(raw.min()), float(raw.max()))
            picture = overlay(r.image(i), heat, alpha=alpha, colormap=colormap)
            lines = [f"{what} | run {r.name} | image {i} | {g}",
                     f"{layers} | {colormap}, alpha {alpha:g} | bar: attention summed over layers and steps"]
            values = "the map in [0, 1], float32"
        else:
            heat, stem, entry["kind"], entry["colormap"] = raw, f"diff-{stem}", f"{kind}-difference", None
            entry.update(compared.describe())
            rng = bar_range(DIFF_COLOR, difference_range(raw))
            value_range = rng if rng is not None else (0.0, 0.0)
            picture = difference_overlay(r.image(i), raw, alpha=alpha)
            lines = [f"{what} | difference {compared.label} | image {i} | {g}",
                     (f"{layers} | blue-white-red, alpha {alpha:g} | bar: difference of the attention summed "
                      "over layers and steps")]
            values = "run - base of the attention summed over layers and steps, float32"
        entry["colorbar"] = {"min": value_range[0], "max": value_range[1], "spans": "map"}
        if not plain:  # a small image enlarged as attention grids enlarge their tiles (the .npy keeps its size)
            k = attention_scale(*heat.shape)
            picture = picture.repeat(k, axis=0).repeat(k, axis=1)
        if not plain and query is not None:
            entry["marker"] = list(query_pixel(query, heat.shape))
            picture = mark_point(picture, *(k * v + k // 2 for v in entry["marker"]))
        if not plain and compared is None:
            picture = labelled_overlay(picture, lines=lines, value_range=value_range, colormap=colormap)
        elif not plain:
            picture = frame(picture, lines=lines, bar=colour_bar(DIFF_COLOR, bar_range(DIFF_COLOR, value_range)))[0]
        return [(f"{stem}.png", encode_png(picture), entry),
                (f"{stem}.npy", _npy(heat), {**entry, "kind": f"{entry['kind']}-map", "values": values})]

    # every map is made before any file is written, so a word missing from one half writes nothing
    results: list[list[tuple[str, bytes, dict[str, Any]]]] = []
    run_parallel(tasks, make, jobs=jobs, done=results)
    with output:
        return [output.write(name, content, entry) for batch in results for name, content, entry in batch]

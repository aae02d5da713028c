"""The maps of one attention grid: a run's, or the difference of two runs (``run - base``).

:func:`grid_maps` reads what one heads x tokens grid of :mod:`.attention_grids` shows, as
tiles with their row and column labels: the ``qk`` probabilities per head and token (a
self-attention layer's at one query pixel), ``k`` keys or ``vqk`` outputs, some heads or their
average, or an aggregate's mean over the layers of one map size. With ``base`` (two runs that
:func:`~dumpunet.analyzer.attention_diff.compare_runs` checked) every map is ``run - base`` in
float32, subtracted before any head average, and a token column whose base token differs says
both (``5:girl-car``). Drawing (colours, tiles, titles, files) is :mod:`.attention_grids`'.

Examples
--------
>>> maps, rows, cols, heads, tokens = grid_maps(run, GridItem("IN01.attn2", 20, 0, "cond"), "qk", "", None)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from dumpunet.analyzer.heatmap import nearest_query
from dumpunet.analyzer.reduce import channel_average as reduce_channels
from dumpunet.analyzer.reduce import difference
from dumpunet.analyzer.tokens import label, select_tokens
from dumpunet.errors import SelectionError
from dumpunet.specs import parse_ints
from dumpunet.store import Run
from dumpunet.store.schema import LayerAttrs, TokenRow

__all__ = ["GridItem", "grid_maps"]


@dataclass(frozen=True)
class GridItem:
    """One grid: a layer (or an aggregate's resolution), step, image and guidance half."""

    layer: str
    step: int
    image: int
    guidance: str
    layers: tuple[str, ...] = ()
    """An aggregate's layers (``layer`` then names their resolution, e.g. ``res16x16``)."""


def grid_maps(run: Run, item: GridItem, feature: str, tokens: str, query: Sequence[float] | None, average: str | None = None,
           lock: AbstractContextManager[Any] | None = None, heads: str = "", base: Run | None = None):
    """Return (maps [rows*cols, h, w], rows, cols, row labels, column labels) for one item.

    ``heads`` (a spec such as ``0`` or ``0-3``; empty: every head) keeps those heads. With
    ``average``, the heads of each token (qk), the heads (k) or every channel (vqk) are
    reduced to one map by :func:`~dumpunet.analyzer.reduce.channel_average` (a numba kernel,
    run holding ``lock``: :func:`~dumpunet.analyzer.pool.kernel_lock`): one row of tiles.
    With ``base`` (a run checked by :class:`~dumpunet.analyzer.attention_diff.RunPair`), the maps
    are ``run - base`` in float32, subtracted before the average; tokens are chosen in ``run``'s
    prompt and compared by position. An aggregate item is :func:`_resolution_mean`'s one row.
    """
    lock = lock or nullcontext()

    def channel_average(x: np.ndarray, kind: str) -> np.ndarray:
        with lock:
            return reduce_channels(x, kind)  # type: ignore[arg-type]

    if item.layers:
        return _resolution_mean(run, item, tokens, base, lock)
    data = _read(run, base, item.layer, item.step, feature, item.guidance, item.image, lock)
    info = run.layer_info(item.layer, feature)
    head_labels = [f"h{i}" for i in range(data.shape[0])] if data.shape[0] > 1 or info.heads != "mean" else ["mean"]
    if heads.strip() and info.heads == "mean":
        flag = "--attention-heads" if info.cross_attention else "--self-attention-heads"
        raise SelectionError(f"{item.layer} holds only the mean of its heads (recorded with {flag} mean): "
                             f"--heads {heads.strip()} has no head to pick")
    if heads.strip():
        chosen = parse_ints(heads, 0, data.shape[0] - 1, noun="head", what=f"head selection of {item.layer}")
        data, head_labels = data[chosen], [head_labels[i] for i in chosen]
    n_heads = data.shape[0]
    if average is not None:
        head_labels = [average]
    hw = info.layer_hw
    cross = info.cross_attention
    if feature == "k":
        row = run.token_row(guidance=item.guidance, image=item.image, block=item.layer)
        _, cols = _token_index(tokens, row, info, data.shape[1], item.layer)
        maps = data[:, cols, :]  # [head, token, dim]: one tile per head
        if average is not None:
            maps = channel_average(maps, average)[None]
        return maps, 1, len(maps), [], head_labels
    if feature == "vqk":
        h, w = hw
        maps = data.transpose(0, 2, 1).reshape(n_heads * data.shape[2], h, w)
        if average is not None:  # the original's V*Q*K average: over all channels (heads x dims)
            return channel_average(maps, average)[None], 1, 1, head_labels, ["all"]
        return maps, n_heads, data.shape[2], head_labels, [str(d) for d in range(data.shape[2])]
    if not cross:
        if query is None:
            raise SelectionError(f"{item.layer} is a self-attention layer: give --query x,y to choose the query pixel")
        q, (px, py) = nearest_query(info, query)
        maps = data[:, q, :].reshape(n_heads, *hw)
        if average is not None:
            maps = channel_average(maps, average)[None]
        return maps, len(maps), 1, head_labels, [f"query ({px},{py})"]
    row = run.token_row(guidance=item.guidance, image=item.image, block=item.layer)
    idx, cols = _token_index(tokens, row, info, data.shape[2], item.layer)
    per_token = data[:, :, cols].transpose(2, 0, 1).reshape(len(idx), n_heads, *hw)  # [token, head, h, w]
    if average is not None:
        maps = np.stack([channel_average(x, average) for x in per_token])
    else:
        maps = per_token.transpose(1, 0, 2, 3).reshape(n_heads * len(idx), *hw)
    base_row = base.token_row(guidance=item.guidance, image=item.image, block=item.layer) if base else None
    return maps, len(maps) // len(idx), len(idx), head_labels, _token_labels(row, base_row, idx)


def _read(run: Run, base: Run | None, layer: str, step: int, feature: str, guidance: str, image: int,
          lock: AbstractContextManager[Any]) -> np.ndarray:
    """One layer's attention at a step in float32: of ``run``, or ``run - base``."""
    data = run.attention(layer, step, feature=feature, guidance=guidance, image=image, dtype=np.float32)
    if base is None:
        return data
    other = base.attention(layer, step, feature=feature, guidance=guidance, image=image, dtype=np.float32)
    with lock:
        return difference(data, other)


def _token_labels(row: TokenRow | None, base_row: TokenRow | None, idx: list[int]) -> list[str]:
    """Column labels ``5:girl``; of a difference, ``5:girl-car`` where the base's token at 5 differs."""
    def name(r: TokenRow | None, i: int) -> str:
        return label(r.tokens[i]) if r is not None and i < len(r.tokens) else str(i)

    labels = []
    for i in idx:
        text = name(row, i)
        if base_row is not None and name(base_row, i) != text:
            text += f"-{name(base_row, i)}"
        labels.append(f"{i}:{text}")
    return labels


def _resolution_mean(run: Run, item: GridItem, tokens: str, base: Run | None = None,
                     lock: AbstractContextManager[Any] | None = None):
    """One row of token maps: the probabilities of ``item.layers`` (one map size) averaged over
    each layer's heads, then over the layers (the mean of the layers' head means; no resampling);
    with ``base``, of ``run - base``."""
    first = item.layers[0]
    row = run.token_row(guidance=item.guidance, image=item.image, block=first)
    for layer in item.layers[1:]:
        other = run.token_row(guidance=item.guidance, image=item.image, block=layer)
        if (other is None) != (row is None) or (row is not None and other.tokens != row.tokens):
            raise SelectionError(f"{first} and {layer} saw different prompts (per-block prompts): an aggregate averages "
                                 "the layers of one prompt; pick them with --layers")
    acc = None
    for layer in item.layers:
        data = _read(run, base, layer, item.step, "qk", item.guidance, item.image, lock or nullcontext())
        idx, cols = _token_index(tokens, row, run.layer_info(layer), data.shape[2], layer)
        if acc is None:
            acc = np.zeros((len(idx), data.shape[1]), np.float64)
        acc += data[:, :, cols].mean(axis=0, dtype=np.float64).T  # [token, query]
    h, w = run.layer_info(first).layer_hw
    maps = (acc / len(item.layers)).astype(np.float32).reshape(len(idx), h, w)
    base_row = base.token_row(guidance=item.guidance, image=item.image, block=first) if base else None
    return maps, 1, len(idx), ["mean"], _token_labels(row, base_row, idx)


def _token_index(spec: str, row: TokenRow | None, info: LayerAttrs, n: int, layer: str) -> tuple[list[int], list[int]]:
    """The prompt positions ``spec`` names and the entries of the stored token axis (``n`` long) that hold them.

    Where only some tokens were recorded (``--attention-tokens``), no selection means those, and a
    position that was not kept is a :class:`SelectionError`.
    """
    positions = info.token_positions(n)
    if not spec.strip() and info.kept_tokens is not None:
        idx = list(positions)
    elif row is None:  # no tokens recorded (e.g. SDXL's zeroed empty negative prompt): indices only
        idx = parse_ints(spec, 0, positions[-1], noun="token", what="token selection") if spec.strip() else list(positions)
    else:
        idx = select_tokens(spec, list(row.tokens), row.length)
    if not idx:
        raise SelectionError("the prompt has no tokens to show; give token indices, e.g. --tokens 0-76")
    return idx, info.token_columns(idx, layer)

"""What the page needs to know about a store, as JSON; and a view state with its defaults filled in.

Everything here reads the store through :mod:`dumpunet.store.reader` only. :func:`structure`
is cheap enough to poll (root and run attributes, the call tables): the page polls it to show
the steps of a recording in progress as they complete.
"""

from __future__ import annotations

from typing import Any

from dumpunet.analyzer.tokens import label
from dumpunet.errors import SelectionError
from dumpunet.store import Run, Store

__all__ = ["generation", "resolve", "run_for", "structure"]


def _tokens(run: Run, guidance: str) -> list[str]:
    """The decoded tokens of one guidance half, start and end tokens included, padding left out."""
    row = run.token_row(guidance=guidance) if guidance in run.guidance_labels else None
    return [] if row is None else [label(t) for t in row.tokens[: row.length]]


def _layers(run: Run) -> list[dict[str, Any]]:
    out = []
    for name in run.attention_layers:
        try:
            arr = run.attention_array(name)
        except SelectionError:  # recorded as k or vqk only: nothing the viewer draws
            continue
        info = run.layer_info(name)
        layer = {"name": name, "hw": list(info.layer_hw), "heads": int(arr.shape[3]), "cross": info.cross_attention}
        if info.kept_tokens is not None:  # --attention-tokens: only these token positions can be shown
            layer["kept_tokens"] = list(info.kept_tokens)
        out.append(layer)
    return out


def _run(store: Store, name: str) -> dict[str, Any]:
    r = store.run(name)
    height, width = r.info.height, r.info.width
    return {
        "name": name,
        "steps": r.steps,
        "incomplete_steps": r.calls.incomplete_steps,
        "total_steps": r.info.steps,
        "complete": r.complete,
        "n_images": r.n_images,
        "guidance": [g for g in r.guidance_labels if g in ("cond", "uncond")],
        "blocks": r.recorded("output"),
        "inputs": r.recorded("input"),
        "layers": _layers(r),
        "tokens": {g: _tokens(r, g) for g in r.guidance_labels},
        "size": [int(height), int(width)] if height and width else None,
        "prompt": r.info.prompt,
    }


def structure(store: Store, index: int) -> dict[str, Any]:
    """The page's picture of one store: blocks with shapes, runs with steps, layers, tokens, pairs."""
    runs = [_run(store, name) for name in store.run_names]
    return {
        "index": index,
        "name": store.path.name,
        "blocks": [{"name": b.name, "shape": list(b.output_shape) if b.output_shape else None,
                    "input_shape": list(b.input_shape) if b.input_shape else None} for b in store.block_table],
        "runs": runs,
        "pairs": [{"base": p.base, "layered": p.layered, "label": p.label} for p in store.pairs],
        "default_run": store.default_run if store.run_names else None,
        "generation": generation(store),
    }


def generation(store: Store) -> str:
    """Changes whenever a call completes or a run finishes: what the page's live poll compares."""
    parts = []
    for name in store.run_names:
        r = store.run(name)
        parts.append(f"{name}:{int(r.calls.done.sum())}:{int(r.complete)}")
    return ",".join(parts)


def run_for(store: Store, run: str, pair: str, mode: str) -> Run:
    """The run a state shows: a pair's base or layered run, ``run``, or the store's default."""
    if pair:
        base, layered = store.pair(pair)
        return base if mode == "base" else layered
    return store.run(run or None)


def resolve(store: Store, state):
    """Fill a state's defaults from the store: the last complete step, the first recorded block or layer."""
    if state.minus >= 0 and state.pair and state.mode == "diff":
        raise SelectionError("show either the pair's difference or the difference of two stores, not both "
                             "(choose base or layered to subtract the other store from it)")
    if state.view == "summary":
        if state.minus < 0 and not state.pair:
            raise SelectionError("the summary chart compares two runs: choose a pair, or another store to subtract")
        # only these fields change the chart (so colours, blocks or tokens share one cached chart);
        # a pair's chart is the same in every mode
        kept = {k: getattr(state, k) for k in ("store", "minus", "run", "pair", "mode", "which", "step", "image", "guidance")}
        state = type(state)(**{**kept, "view": "summary", "mode": "diff" if state.minus < 0 else state.mode})
    r = run_for(store, state.run, state.pair, state.mode)
    changes: dict[str, Any] = {}
    if state.pair and state.mode != "diff":
        changes["run"] = r.name  # so the command names the run
    if state.step == 0:
        if not r.steps:
            raise SelectionError(f"run {r.name!r} has no completely written step yet")
        changes["step"] = r.steps[-1]
    if state.view == "grid" and not state.block:
        blocks = r.recorded(state.which)
        if not blocks:
            raise SelectionError(f"run {r.name!r} has no recorded block {state.which}s")
        changes["block"] = blocks[-1]
    if state.view == "attention" and not state.layer:
        cross = [name for name in r.attention_layers if ".attn2" in name]
        if not cross:
            raise SelectionError(f"run {r.name!r} was recorded without cross-attention")
        changes["layer"] = cross[0]
    return state.with_(**changes) if changes else state

"""What ``dumpunet info`` shows: a JSON-able summary of a store and its text rendering."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dumpunet.errors import SelectionError
from dumpunet.specs import format_ints
from dumpunet.store import Run, Store, open_store
from dumpunet.store.location import StoreUrl, is_url
from dumpunet.store.schema import ATTENTION_FEATURES, RootAttrs, RunAttrs, human_bytes, model_networks

_RUN_FIELDS = (
    ("prompt", "prompt"),
    ("negative_prompt", "negative prompt"),
    ("seed", "seed"),
    ("prompt_line", "prompts line"),
    ("sampler", "sampler"),
    ("scheduler", "scheduler"),
    ("cfg", "cfg"),
)
"""RunAttrs fields that ``info`` shows as lines, with their labels."""


@dataclass(frozen=True)
class LayerSummary:
    """One recorded attention layer of a run: heads and token count, read from its arrays' shapes."""

    name: str
    cross_attention: bool
    layer_hw: tuple[int, int]
    heads: int  # length of the head axis (1 when the heads were averaged)
    heads_mode: str  # "all", or "mean"
    tokens: int | None  # length of the token axis (keys); None when only vqk was recorded
    queries: int  # query pixels kept
    features: list[str]
    kept_tokens: tuple[int, ...] | None = None  # --attention-tokens: the token positions recorded

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cross_attention": self.cross_attention,
            "layer_hw": list(self.layer_hw),
            "heads": self.heads,
            "heads_mode": self.heads_mode,
            "tokens": self.tokens,
            "queries": self.queries,
            "features": self.features,
            "kept_tokens": list(self.kept_tokens) if self.kept_tokens is not None else None,
        }


def summarize_layers(run: Run) -> list[LayerSummary]:
    """The attention layers of a run with their head and token counts, in recording order."""
    out = []
    for name in run.attention_layers:
        arrays = {}
        for feature in ATTENTION_FEATURES:
            try:
                arrays[feature] = run.attention_array(name, feature)
            except SelectionError:
                continue
        if not arrays:
            continue
        first = next(iter(arrays))
        info = run.layer_info(name, first)
        sizes: dict[str, int] = {}
        for feature, arr in arrays.items():
            for dim, n in zip(ATTENTION_FEATURES[feature].dims, arr.shape):
                sizes.setdefault(dim, n)
        rows, cols = info.queries
        out.append(LayerSummary(
            name=name,
            cross_attention=info.cross_attention,
            layer_hw=info.layer_hw,
            heads=sizes["head"],
            heads_mode=info.heads,
            tokens=sizes.get("token"),
            queries=sizes.get("query", len(rows) * len(cols)),
            features=list(arrays),
            kept_tokens=info.kept_tokens,
        ))
    return out


@dataclass(frozen=True)
class RunSummary:
    """One run of :class:`Summary`: its attributes and what its call table says."""

    info: RunAttrs
    steps: list[int]
    incomplete_steps: list[int]
    calls: int
    recorded_outputs: list[str]
    recorded_inputs: list[str]
    attention: list[LayerSummary]

    def to_json(self) -> dict[str, Any]:
        return {
            "attrs": self.info.to_json(),
            "complete": self.info.complete,
            "steps": self.steps,
            "incomplete_steps": self.incomplete_steps,
            "calls": self.calls,
            "recorded_outputs": self.recorded_outputs,
            "recorded_inputs": self.recorded_inputs,
            "attention": [layer.to_json() for layer in self.attention],
        }


@dataclass(frozen=True)
class Summary:
    """What ``dumpunet info`` shows; :meth:`to_json` is ``info --json``."""

    path: str
    root: RootAttrs
    runs: dict[str, RunSummary]
    disk_bytes: int | None  # None: a URL whose server lists no sizes (http)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "pairs": [p.to_json() for p in self.root.pairs],
            **({"prompt_list": self.root.prompt_list.to_json()} if self.root.prompt_list is not None else {}),
            "format": self.root.header.to_json(),
            "model": self.root.model,
            "versions": self.root.versions,
            "blocks": [b.to_json() for b in self.root.blocks],
            "runs": {name: r.to_json() for name, r in self.runs.items()},
            "disk_bytes": self.disk_bytes,
        }


def summarize(path: str | Path | StoreUrl) -> Summary:
    """Return model, runs, blocks (with shapes and what was recorded), steps and size of a store."""
    store: Store = open_store(path)
    runs = {}
    for name in store.run_names:
        r = store.run(name)
        calls = r.calls
        runs[name] = RunSummary(
            info=r.info,
            steps=r.steps,
            incomplete_steps=calls.incomplete_steps,
            calls=int(calls.done.sum()),
            recorded_outputs=r.recorded("output"),
            recorded_inputs=r.recorded("input"),
            attention=summarize_layers(r),
        )
    return Summary(str(store.path), store.info, runs, store.disk_bytes())


def _size(s: Summary) -> str:
    if s.disk_bytes is None:
        return "unknown (the server lists no sizes)"
    return f"{human_bytes(s.disk_bytes)} {'stored' if is_url(s.path) else 'on disk'}"


def describe(s: Summary) -> str:
    """Render a :class:`Summary` as text for people."""
    fmt = s.root.header
    model = s.root.model
    lines = [
        f"store     {s.path}  (format {fmt.format_version}.{fmt.format_minor}, {fmt.writer or '?'}, {fmt.created or '?'})",
        f"model     {model.get('name', '?')}  [{model.get('source', model.get('pipeline', '?'))}]"
        + (f"  unet {model['unet_fingerprint'][:12]}" if model.get("unet_fingerprint") else ""),
        f"size      {_size(s)}",
    ]
    loras, embeddings = model_networks(model)
    for lora in loras:
        weight = f"{lora.te_weight:g}" + (f" (U-Net {lora.unet_weight:g})" if lora.unet_weight != lora.te_weight else "")
        lines.insert(-1, f"lora      {lora.name}  weight {weight}  hash {lora.short_hash}  {lora.file}")
    for emb in embeddings:
        lines.insert(-1, f"embedding {emb.name}  {emb.vectors} vector(s)  hash {emb.short_hash}  {emb.file}")
    listed = s.root.prompt_list
    if listed is not None:
        which = f", prompt {listed.index}" if listed.index is not None else ""
        lines.insert(-1, f"prompts   {listed.source}: {listed.count} prompts{which}, seed {listed.seed} where a row "
                         "gives none (record --prompts)")
    order = [b.name for b in s.root.blocks]
    recorded: dict[str, set[str]] = {}
    for name, run in s.runs.items():
        a = run.info
        status = "complete" if a.complete else f"INCOMPLETE ({a.interrupted or 'recording did not finish'})"
        lines.append(f"run {name}: {status}")
        for key, label in _RUN_FIELDS:
            value = getattr(a, key)
            if value not in (None, ""):
                lines.append(f"  {label:<16} {value}")
        for half, label in (("cond", "block prompts"), ("uncond", "block negatives")):
            per_block = a.block_prompts.get(half)
            if per_block:
                for text, names in _group_blocks(per_block, order):
                    lines.append(f"  {label:<16} {names}: {text!r}")
                    label = ""
        lines.append(
            f"  {'size':<16} {a.width}x{a.height}  images {a.n_images}  "
            f"guidance {','.join(a.guidance)}  dtype {a.dtype}"
        )
        steps = format_ints(run.steps) or "none"
        lines.append(f"  {'steps':<16} {steps} of {a.steps} complete ({run.calls} U-Net calls)")
        if run.incomplete_steps:
            lines.append(f"  {'incomplete':<16} step(s) {format_ints(run.incomplete_steps)}")
        if run.attention:
            lines.append(f"  {'attention':<16} {'layer':<14} {'kind':<5} {'size':<7} {'heads':<7} {'tokens':<7} {'queries':<8} features")
            for layer in run.attention:
                kind = "cross" if layer.cross_attention else "self"
                size = "x".join(map(str, layer.layer_hw))
                heads = f"{layer.heads}" + (" (mean)" if layer.heads_mode == "mean" else "")
                tokens = "-" if layer.tokens is None else str(layer.tokens)
                if layer.kept_tokens is not None:  # the positions, not just how many
                    tokens += f" ({format_ints(layer.kept_tokens)})"
                lines.append(f"  {'':<16} {layer.name:<14} {kind:<5} {size:<7} {heads:<7} {tokens:<7} {layer.queries:<8} "
                             + "+".join(layer.features))
        for b in run.recorded_outputs:
            recorded.setdefault(b, set()).add("out")
        for b in run.recorded_inputs:
            recorded.setdefault(b, set()).add("in")
    for p in s.root.pairs:
        lines.append(f"pair {p.label}: {p.layered} vs base {p.base}")
    lines.append("blocks")
    lines.append(f"  {'name':<6} {'module':<34} {'output':<14} {'input':<14} {'xattn':<5} recorded")
    for b in s.root.blocks:
        shape_out = "x".join(map(str, b.output_shape))
        shape_in = "x".join(map(str, b.input_shape))
        rec = "+".join(sorted(recorded.get(b.name, set()), reverse=True)) or "-"
        lines.append(
            f"  {b.name:<6} {b.module:<34} {shape_out:<14} {shape_in:<14} {'yes' if b.cross_attention else 'no':<5} {rec}"
        )
    return "\n".join(lines)


def _group_blocks(prompts: dict[str, str], order: list[str]) -> list[tuple[str, str]]:
    """Group blocks by prompt: ``[("a cute girl", "IN00-IN11, OUT00-OUT11"), ("a excellent girl", "M00")]``."""
    groups: dict[str, list[int]] = {}
    for i, b in enumerate(order):
        if b in prompts:
            groups.setdefault(prompts[b], []).append(i)
    out = []
    for text, idx in groups.items():
        runs: list[str] = []
        start = prev = idx[0]
        for i in [*idx[1:], None]:
            if i is not None and i == prev + 1:
                prev = i
                continue
            runs.append(order[start] if start == prev else f"{order[start]}-{order[prev]}")
            if i is not None:
                start = prev = i
        out.append((text, ", ".join(runs)))
    return out

"""What ``dumpunet info`` shows: a JSON-able summary of a store and its text rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dumpunet.specs import format_ints
from dumpunet.store import Store, open_store
from dumpunet.store.schema import human_bytes

_RUN_FIELDS = (
    ("prompt", "prompt"),
    ("negative_prompt", "negative prompt"),
    ("seed", "seed"),
    ("sampler", "sampler"),
    ("scheduler", "scheduler"),
    ("cfg", "cfg"),
)


def summarize(path: str | Path) -> dict[str, Any]:
    """Return model, runs, blocks (with shapes and what was recorded), steps and size of a store."""
    store: Store = open_store(path)
    runs = {}
    for name in store.run_names:
        r = store.run(name)
        calls = r.calls
        runs[name] = {
            "attrs": r.attrs,
            "complete": r.complete,
            "steps": r.steps,
            "incomplete_steps": calls.incomplete_steps,
            "calls": int(calls.done.sum()),
            "recorded_outputs": r.recorded("output"),
            "recorded_inputs": r.recorded("input"),
        }
    return {
        "path": str(store.path),
        "pairs": store.pairs,
        "format": store.header,
        "model": store.attrs.get("model", {}),
        "versions": store.attrs.get("versions", {}),
        "blocks": [b.to_json() for b in store.block_table],
        "runs": runs,
        "disk_bytes": store.disk_bytes(),
    }


def describe(s: dict[str, Any]) -> str:
    """Render :func:`summarize` output as text for people."""
    fmt = s["format"]
    model = s["model"]
    lines = [
        f"store     {s['path']}  (format {fmt['format_version']}.{fmt.get('format_minor', 0)}, {fmt.get('writer', '?')}, {fmt.get('created', '?')})",
        f"model     {model.get('name', '?')}  [{model.get('source', model.get('pipeline', '?'))}]"
        + (f"  unet {model['unet_fingerprint'][:12]}" if model.get("unet_fingerprint") else ""),
        f"size      {human_bytes(s['disk_bytes'])} on disk",
    ]
    recorded: dict[str, set[str]] = {}
    for name, run in s["runs"].items():
        a = run["attrs"]
        status = "complete" if run["complete"] else f"INCOMPLETE ({a.get('interrupted', 'recording did not finish')})"
        lines.append(f"run {name}: {status}")
        for key, label in _RUN_FIELDS:
            if a.get(key) not in (None, ""):
                lines.append(f"  {label:<16} {a[key]}")
        order = [b["name"] for b in s["blocks"]]
        for half, label in (("cond", "block prompts"), ("uncond", "block negatives")):
            per_block = a.get("block_prompts", {}).get(half)
            if per_block:
                for text, names in _group_blocks(per_block, order):
                    lines.append(f"  {label:<16} {names}: {text!r}")
                    label = ""
        lines.append(
            f"  {'size':<16} {a.get('width')}x{a.get('height')}  images {a.get('n_images')}  "
            f"guidance {','.join(a.get('guidance', []))}  dtype {a.get('dtype')}"
        )
        steps = format_ints(run["steps"]) or "none"
        lines.append(f"  {'steps':<16} {steps} of {a.get('steps')} complete ({run['calls']} U-Net calls)")
        if run["incomplete_steps"]:
            lines.append(f"  {'incomplete':<16} step(s) {format_ints(run['incomplete_steps'])}")
        for b in run["recorded_outputs"]:
            recorded.setdefault(b, set()).add("out")
        for b in run["recorded_inputs"]:
            recorded.setdefault(b, set()).add("in")
    for p in s.get("pairs", []):
        lines.append(f"pair {p['label']}: {p['layered']} vs base {p['base']}")
    lines.append("blocks")
    lines.append(f"  {'name':<6} {'module':<34} {'output':<14} {'input':<14} {'xattn':<5} recorded")
    for b in s["blocks"]:
        shape_out = "x".join(map(str, b["output_shape"]))
        shape_in = "x".join(map(str, b["input_shape"]))
        rec = "+".join(sorted(recorded.get(b["name"], set()), reverse=True)) or "-"
        lines.append(
            f"  {b['name']:<6} {b['module']:<34} {shape_out:<14} {shape_in:<14} {'yes' if b['cross_attention'] else 'no':<5} {rec}"
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

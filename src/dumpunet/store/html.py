"""The table a notebook shows for a store (``Store._repr_html_``)."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from dumpunet.specs import format_ints

if TYPE_CHECKING:  # the reader imports this module when a notebook asks
    from dumpunet.store.reader import Store


def _html_row(name: str, value: Any) -> str:
    return f"<tr><th style='text-align:left'>{escape(name)}</th><td style='text-align:left'>{escape(str(value))}</td></tr>"


def store_html(store: Store) -> str:
    """The table a notebook shows for a store: blocks with shapes, then per run its steps, images,
    guidance, attention layers and prompt, then the pairs (``Store._repr_html_``)."""
    shapes = ", ".join(f"{b.name} {'x'.join(map(str, b.output_shape))}" for b in store.block_table)
    rows = [_html_row("store", store.path), _html_row("blocks", shapes or "none")]
    for name in store.run_names:
        r = store.run(name)
        state = "complete" if r.complete else "recording (or interrupted)"
        rows.append(_html_row(f"run {name}", f"steps {format_ints(r.steps) or 'none'} of {r.info.steps}, "
                              f"{r.n_images} image(s), guidance {', '.join(r.guidance_labels)}, {state}"))
        if r.info.prompt:
            rows.append(_html_row("  prompt", r.info.prompt))
        if r.attention_layers:
            rows.append(_html_row("  attention", ", ".join(r.attention_layers)))
    for pair in store.pairs:
        rows.append(_html_row(f"pair {pair.label}", f"{pair.base} -> {pair.layered}"))
    return "<table>" + "".join(rows) + "</table>"

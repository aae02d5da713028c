"""An HTML summary table of a store, for Jupyter (``Store._repr_html_``).

Examples
--------
>>> html = store_html(dumpunet.open("girl.zarr"))  # doctest: +SKIP
>>> html.startswith("<table")  # doctest: +SKIP
True
"""

from __future__ import annotations

from html import escape
from typing import Any

from dumpunet.specs import format_ints
from dumpunet.store import Store
from dumpunet.viewer.structure import structure

__all__ = ["store_html"]


def _row(name: str, value: Any) -> str:
    return f"<tr><th style='text-align:left'>{escape(name)}</th><td style='text-align:left'>{escape(str(value))}</td></tr>"


def store_html(store: Store) -> str:
    """A table: path, blocks with shapes, then per run its steps, images, guidance, layers and prompt."""
    info = structure(store, 0)
    shapes = ", ".join(f"{b['name']} {'x'.join(map(str, b['shape']))}" for b in info["blocks"] if b["shape"])
    rows = [_row("store", store.path), _row("blocks", shapes or "none")]
    for run in info["runs"]:
        state = "complete" if run["complete"] else "recording (or interrupted)"
        rows.append(_row(f"run {run['name']}", f"steps {format_ints(run['steps']) or 'none'} of {run['total_steps']}, "
                         f"{run['n_images']} image(s), guidance {', '.join(run['guidance'])}, {state}"))
        if run["prompt"]:
            rows.append(_row("  prompt", run["prompt"]))
        if run["layers"]:
            rows.append(_row("  attention", ", ".join(layer["name"] for layer in run["layers"])))
    for pair in info["pairs"]:
        rows.append(_row(f"pair {pair['label']}", f"{pair['base']} -> {pair['layered']}"))
    return "<table>" + "".join(rows) + "</table>"

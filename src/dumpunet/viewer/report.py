"""``dumpunet view --export report/``: the viewer as a static folder that opens from ``file://``.

The page is the viewer's own (``static/``), with its data written beside it instead of served:
``report.js`` sets ``window.DUMPUNET_REPORT`` to what the server would answer to ``/api/stores``
and ``/api/structure``, plus one entry per pre-rendered view (its PNG file ``viewNNNNN.png``, the
CLI command that writes it, its grid layout, or the error the server would show). No server,
no network: a browser opens ``index.html`` from disk, and the folder can be zipped and shared.

A report holds the views a reader scrubs through, with the default colours:

=============  =========================================================================
``grid``       every recorded block (outputs and inputs), each selected step: the channel
               grid and the mean, 1-norm and 2-norm over channels
``attention``  every cross-attention layer, each selected step: all heads, and their mean
``heatmap``    every token of both guidance halves' prompts, each selected step
``final``      each image
=============  =========================================================================

for every run, every pair's difference, every image and guidance half selected by ``pick``
(``blocks`` and ``steps`` narrow what is written). Views are keyed by :func:`view_key`; the page
computes the same key from its state (``reportKey`` in ``viewer.js``), and says so where a view
is not in the report (other colours, one channel, query maps: ``dumpunet view`` serves those).

Examples
--------
>>> files = export_report(["girl.zarr"], "report", Pick(steps="10,20"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from importlib import resources
from typing import Any

from dumpunet.analyzer.output import OutputFolder, WrittenFile
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.pool import check_jobs, kernel_lock, progress_bar, run_parallel
from dumpunet.errors import DumpUnetError
from dumpunet.specs import parse_ints
from dumpunet.store import Run, Store, open_store
from dumpunet.viewer.state import AVERAGES, ViewState
from dumpunet.viewer.structure import resolve, structure

__all__ = ["export_report", "view_key"]

_KEY_FIELDS = {
    "grid": ("which", "block", "average", "step", "image", "guidance"),
    "attention": ("layer", "head", "token", "step", "image", "guidance"),
    "heatmap": ("token", "step", "image", "guidance"),
    "final": ("image",),
}


def view_key(state: ViewState) -> str:
    """The report's name of a view: the fields that decide it, sorted, as ``name=value&...``.

    A pair's difference is named by the pair (``pair=..&mode=diff``), anything else by its run.

    Examples
    --------
    >>> view_key(ViewState(view="grid", run="base", block="OUT11", step=20))
    'average=&block=OUT11&guidance=cond&image=0&run=base&step=20&store=0&view=grid&which=output'
    """
    names = ("store", "view", *_KEY_FIELDS[state.view])
    key = {n: getattr(state, n) for n in names}
    if state.pair and state.mode == "diff":
        key.update(pair=state.pair, mode="diff")
    else:
        key["run"] = state.run
    return "&".join(f"{n}={key[n]}" for n in sorted(key))


def export_report(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    pick: Pick = Pick(),
    *,
    progress: bool = True,
    jobs: int | None = None,
) -> list[WrittenFile]:
    """Write the static viewer of ``paths`` to folder ``out``; return the files written.

    ``pick``'s ``blocks``, ``steps``, ``images`` and ``guidance`` narrow the views written
    (empty: all); the page, ``report.js`` and one PNG per view go through one output folder.
    ``jobs``: threads each drawing, encoding and writing one view at a time (default: every
    CPU, :mod:`~dumpunet.analyzer.pool`); the files do not depend on the count.
    """
    jobs = check_jobs(jobs)
    stores = [open_store(p) for p in paths]
    states = [s for i, st in enumerate(stores) for s in _states(st, i, pick)]
    output = OutputFolder(out)
    lock = kernel_lock()

    def one(item: tuple[int, ViewState]) -> tuple[dict[str, Any], WrittenFile | None]:
        n, state = item
        return _render(stores[state.store], state, output, f"view{n:05d}.png", lock)

    drawn: list[tuple[dict[str, Any], WrittenFile | None]] = []
    with progress_bar(len(states), progress, unit="view", desc="report") as bar, output:
        run_parallel(enumerate(states), one, jobs=jobs, done=drawn, on_done=lambda _: bar.update(1))
        views = {view_key(state): entry for state, (entry, _) in zip(states, drawn)}
        written = [f for _, f in drawn if f is not None]
        data = {
            "stores": {"stores": [{"index": i, "name": st.path.name} for i, st in enumerate(stores)],
                       "defaults": asdict(ViewState())},
            "structures": [structure(st, i) for i, st in enumerate(stores)],
            "views": views,
        }
        script = "window.DUMPUNET_REPORT = " + json.dumps(data, separators=(",", ":")) + ";\n"
        written.append(output.write("report.js", script.encode(), {"kind": "report-data", "views": len(views)}))
        written += _page(output)
    return written


def _render(store: Store, state: ViewState, output: OutputFolder, name: str,
            lock: AbstractContextManager[Any]) -> tuple[dict[str, Any], WrittenFile | None]:
    """Draw one view into ``name``: its entry (file, command, grid) and file, or the error the page shows.

    ``lock`` is held while the view is drawn (its numba kernels: :func:`~dumpunet.analyzer.pool.kernel_lock`).
    """
    from dumpunet.analyzer.png import encode_png
    from dumpunet.viewer.views import command_for, grid_layout, render_view

    try:
        resolved = resolve(store, state)
        with lock:
            pixels = render_view(store, resolved)
        layout = grid_layout(store, resolved)
    except DumpUnetError as exc:
        return {"error": str(exc)}, None
    written = output.write(name, encode_png(pixels), {"kind": "report-view", "view": view_key(state)})
    return {"file": name, "command": command_for(store, resolved), "grid": list(layout) if layout else [],
            "query": resolved.query()}, written


def _page(output: OutputFolder) -> list[WrittenFile]:
    """The viewer's page, its files beside ``index.html``, ``report.js`` loaded first."""
    static = resources.files("dumpunet.viewer") / "static"
    files = []
    for name in ("viewer.js", "viewer.css"):
        files.append(output.write(name, (static / name).read_bytes(), {"kind": "report-page"}))
    html = (static / "index.html").read_text(encoding="utf-8")
    html = html.replace('href="/static/', 'href="').replace(
        '<script src="/static/viewer.js">', '<script src="report.js"></script>\n<script src="viewer.js">')
    files.append(output.write("index.html", html.encode(), {"kind": "report-page"}))
    return files


def _states(store: Store, index: int, pick: Pick) -> Iterator[ViewState]:
    """Every view of one store that the report holds (see the module)."""
    chosen_blocks = set(store.select_blocks(pick.blocks)) if pick.blocks.strip() else None
    targets: list[tuple[Run, dict[str, Any]]] = [(store.run(name), {"run": name}) for name in store.run_names]
    targets += [(store.pair(p.label)[1], {"pair": p.label, "mode": "diff"}) for p in store.pairs]
    for run, where in targets:
        complete = set(run.steps)
        steps = [s for s in store.select_steps(pick.steps, run=run.name) if s in complete]
        images = parse_ints(pick.images, 0, run.n_images - 1, noun="image", what="image spec")
        halves = [g for g in run.guidance_labels if g in (pick.halves or ("cond", "uncond"))]
        layers = [name for name in run.attention_layers if ".attn2" in name]
        base = dict(store=index, **where)
        for image in images:
            yield ViewState(view="final", image=image, **base)
            for guidance, step in ((g, s) for g in halves for s in steps):
                at = dict(base, image=image, guidance=guidance, step=step)
                for which in ("output", "input"):
                    for block in run.recorded(which):
                        if chosen_blocks is None or block in chosen_blocks:
                            for average in ("", *AVERAGES):
                                yield ViewState(view="grid", which=which, block=block, average=average, **at)
                for layer in layers:
                    if chosen_blocks is None or layer.split(".")[0] in chosen_blocks:
                        yield from (ViewState(view="attention", layer=layer, head=h, **at) for h in ("all", "mean"))
                if layers:  # a pair's difference: the layered run's tokens, compared by position
                    row = run.token_row(guidance=guidance)
                    for token in range(row.length if row is not None else 0):
                        yield ViewState(view="heatmap", token=token, **at)

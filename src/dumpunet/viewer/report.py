"""``dumpunet view --export report/``: the viewer as a static folder that opens from ``file://``.

The page is the viewer's own (``static/``), with its data written beside it instead of served:
``report.js`` sets ``window.DUMPUNET_REPORT`` to what the server would answer to ``/api/stores``
and ``/api/structure``, plus one entry per pre-rendered view (its PNG file ``viewNNNNN.png``, the
CLI command that writes it, its grid layout, or the error the server would show). No server,
no network: a browser opens ``index.html`` from disk, and the folder can be zipped and shared.

A report holds the views a reader scrubs through, with the default colours:

=============  =========================================================================
``grid``       every recorded block (outputs and inputs), each selected step: the channel
               grid (of ``pick.channels``, a subset, where given) and the mean, 1-norm and
               2-norm over its channels
``attention``  every cross-attention layer, each selected step: all heads, and their mean
``heatmap``    every token of both guidance halves' prompts, each selected step
``summary``    a pair's (or two stores') summary chart, each selected step
``final``      each image
=============  =========================================================================

for every run, every pair's difference, every image and guidance half selected by ``pick``
(``blocks``, ``steps`` and ``channels`` narrow what is written). With several stores, also each
store minus each other one (``minus``), for each run of the first: the grids, attention (where
both runs hold the layer), summary charts and final images of ``A - B``; a view that cannot be
subtracted holds the error the server would show. Views are keyed by :func:`view_key`; the page
computes the same key from its state (``reportPicture`` in ``viewer.js``), and says so where a view
is not in the report (other colours or channels, one channel or token alone, query maps, word
heatmaps of two stores: ``dumpunet view`` serves those).

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
from dumpunet.analyzer.selection import matching_run
from dumpunet.errors import DumpUnetError
from dumpunet.specs import parse_ints
from dumpunet.store import Run, Store, open_store
from dumpunet.viewer.state import AVERAGES, ViewState
from dumpunet.viewer.structure import resolve, structure

__all__ = ["export_report", "view_key"]

_KEY_FIELDS = {
    "grid": ("which", "block", "channels", "average", "step", "image", "guidance"),
    "attention": ("layer", "head", "token", "step", "image", "guidance"),
    "heatmap": ("token", "step", "image", "guidance"),
    "summary": ("which", "step", "image", "guidance"),
    "final": ("image",),
}


def view_key(state: ViewState) -> str:
    """The report's name of a view: the fields that decide it, sorted, as ``name=value&...``.

    A pair's difference (and a pair's summary chart, the same in every mode) is named by the
    pair (``pair=..&mode=diff``), anything else by its run; the difference of two stores by the
    run and the store subtracted (``minus``).

    Examples
    --------
    >>> view_key(ViewState(view="grid", run="base", block="OUT11", step=20))
    'average=&block=OUT11&channels=&guidance=cond&image=0&run=base&step=20&store=0&view=grid&which=output'
    """
    names = ("store", "view", *_KEY_FIELDS[state.view])
    key = {n: getattr(state, n) for n in names}
    if state.minus >= 0:
        key.update(run=state.run, minus=state.minus)
    elif state.pair and (state.mode == "diff" or state.view == "summary"):
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

    ``pick``'s ``blocks``, ``steps``, ``images``, ``guidance`` and ``channels`` narrow the views
    written (empty: all; ``channels``: each grid shows that subset, and the page opens on it); the
    page, ``report.js`` and one PNG per view go through one output folder.
    ``jobs``: threads each drawing, encoding and writing one view at a time (default: every
    CPU, :mod:`~dumpunet.analyzer.pool`); the files do not depend on the count.
    """
    jobs = check_jobs(jobs)
    if pick.channels.strip():  # its syntax now, with a caret; each block checks its range (the page's error)
        parse_ints(pick.channels, 0, 1 << 30, noun="channel", what="channel spec")
    stores = [open_store(p) for p in paths]
    states = [s for i, st in enumerate(stores) for s in _states(st, i, pick)]
    states += [s for i, st in enumerate(stores) for j, other in enumerate(stores) if i != j
               for s in _minus_states(st, i, other, j, pick)]
    output = OutputFolder(out)
    lock = kernel_lock()

    def one(item: tuple[int, ViewState]) -> tuple[dict[str, Any], WrittenFile | None]:
        n, state = item
        minus = stores[state.minus] if state.minus >= 0 else None
        return _render(stores[state.store], state, output, f"view{n:05d}.png", lock, minus)

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
            "channels": pick.channels.strip(),  # the grids' subset: the page opens on it
        }
        script = "window.DUMPUNET_REPORT = " + json.dumps(data, separators=(",", ":")) + ";\n"
        written.append(output.write("report.js", script.encode(), {"kind": "report-data", "views": len(views)}))
        written += _page(output)
    return written


def _render(store: Store, state: ViewState, output: OutputFolder, name: str, lock: AbstractContextManager[Any],
            minus: Store | None = None) -> tuple[dict[str, Any], WrittenFile | None]:
    """Draw one view into ``name``: its entry (file, command, grid) and file, or the error the page shows.

    ``lock`` is held while the view is drawn (its numba kernels: :func:`~dumpunet.analyzer.pool.kernel_lock`);
    ``minus``: the store that ``state.minus`` names.
    """
    from dumpunet.analyzer.png import encode_png
    from dumpunet.viewer.views import command_for, grid_layout, render_view

    try:
        resolved = resolve(store, state)
        with lock:
            pixels = render_view(store, resolved, minus)
        layout = grid_layout(store, resolved)
    except DumpUnetError as exc:
        return {"error": str(exc)}, None
    written = output.write(name, encode_png(pixels), {"kind": "report-view", "view": view_key(state)})
    return {"file": name, "command": command_for(store, resolved, minus), "grid": list(layout) if layout else [],
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
    targets: list[tuple[Run, dict[str, Any]]] = [(store.run(name), {"run": name}) for name in store.run_names]
    targets += [(store.pair(p.label)[1], {"pair": p.label, "mode": "diff"}) for p in store.pairs]
    for run, where in targets:
        layers = [name for name in run.attention_layers if ".attn2" in name]
        for at in _places(store, run, pick, dict(store=index, **where)):
            yield from _views(store, run, pick, at, layers, summary="pair" in where)
            if layers and "step" in at:  # a pair's difference: the layered run's tokens, compared by position
                row = run.token_row(guidance=at["guidance"])
                for token in range(row.length if row is not None else 0):
                    yield ViewState(view="heatmap", token=token, **at)


def _minus_states(store: Store, index: int, other: Store, other_index: int, pick: Pick) -> Iterator[ViewState]:
    """The views of ``store - other`` (each run of ``store`` minus ``other``'s run of its name, or default run)."""
    for name in store.run_names:
        run = store.run(name)
        base = matching_run(other, name)
        layers = [n for n in run.attention_layers if ".attn2" in n and n in base.attention_layers]
        for at in _places(store, run, pick, {"store": index, "run": name, "minus": other_index}):
            yield from _views(store, run, pick, at, layers, summary=True)


def _places(store: Store, run: Run, pick: Pick, base: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The selected images (``base`` plus ``image``), and of each its guidance halves and complete steps."""
    complete = set(run.steps)
    steps = [s for s in store.select_steps(pick.steps, run=run.name) if s in complete]
    images = parse_ints(pick.images, 0, run.n_images - 1, noun="image", what="image spec")
    halves = [g for g in run.guidance_labels if g in (pick.halves or ("cond", "uncond"))]
    for image in images:
        yield dict(base, image=image)
        for guidance, step in ((g, s) for g in halves for s in steps):
            yield dict(base, image=image, guidance=guidance, step=step)


def _views(store: Store, run: Run, pick: Pick, at: dict[str, Any], layers: list[str], *,
           summary: bool) -> Iterator[ViewState]:
    """At one image (``at`` without a step: its final image) or one image, half and step: grids,
    attention of ``layers``, and with ``summary`` the summary chart of each recorded side."""
    if "step" not in at:
        yield ViewState(view="final", **at)
        return
    chosen = set(store.select_blocks(pick.blocks)) if pick.blocks.strip() else None
    for which in ("output", "input"):
        for block in run.recorded(which):
            if chosen is None or block in chosen:
                for average in ("", *AVERAGES):
                    yield ViewState(view="grid", which=which, block=block, channels=pick.channels.strip(),
                                    average=average, **at)
        if summary and run.recorded(which):
            yield ViewState(view="summary", which=which, **at)
    for layer in layers:
        if chosen is None or layer.split(".")[0] in chosen:
            yield from (ViewState(view="attention", layer=layer, head=h, **at) for h in ("all", "mean"))

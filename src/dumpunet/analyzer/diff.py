"""Difference maps of a pair of runs: where and when a per-block prompt changed the U-Net.

A store recorded with ``record --pair`` (or ``sweep``) holds a base run and a layered run with
the same seed and settings. For each selected block, step, image and guidance half, ``layered -
base`` (float32, :func:`~dumpunet.analyzer.reduce.difference`) is rendered exactly as
:func:`~dumpunet.analyzer.render.render` renders features, with any colorization, ``average``,
``scale``, auto scope or ``plain`` (labelled by default, the title naming both runs); only the names start with ``diff-``, so diffs and renders of one store
can share a folder. Beside the maps go:

=============================  ===============================================================
``summary.csv``                one row per block, step, image, guidance half: ``mean_abs_diff``
                               = mean ``|layered - base|``, ``base_mean_abs`` = mean ``|base|``
                               (over the selected channels and all pixels, in float64), and
                               ``relative`` = their ratio (0 where both are 0, ``inf`` where only
                               the base is 0); values are written exactly (``repr`` of a float)
``summary.png``                ``relative`` as a block x step heatmap (the mean over the selected
                               images and guidance halves; a colour bar from 0 to its largest value;
                               white where the base is 0); the manifest lists the blocks by peak
``final-base-img{i}.png``      the final image of the base run
``final-layered-img{i}.png``   the final image of the layered run
``final-diff-img{i}.png``      ``|layered - base|`` per RGB channel, unscaled: the true pixel
                               difference (mostly dark: a change of 10 is 10/255)
``final-diff-norm-img{i}.png`` the same stretched so that the image's largest channel difference
                               is white (``round(d * 255 / max d)``; black if nothing changed)
=============================  ===============================================================

With ``export``, the ``layered - base`` tensors (float32) are written too, as
:func:`~dumpunet.analyzer.export.export` writes features: ``bin`` under the original's dump names
(``000-OUT11-020-0000-cond.bin``), ``npy`` and ``safetensors`` as ``diff-OUT11-step020.npy``.

Every file is written atomically and listed in the folder's one ``manifest.json`` with its
parameters (:class:`~dumpunet.analyzer.output.OutputFolder`). One pair per folder: diffing another pair of a sweep into the same folder replaces these files.

Examples
--------
>>> dumpunet.diff("girl.zarr", Pick(blocks="IN00-OUT11", steps="1-20"), ColorSpec("Red/Blue", "linear"),
...               out="diff")  # doctest: +SKIP
>>> dumpunet.diff("sweep.zarr", style=GridStyle(average="2-norm"), pair="IN04", out="diff-IN04")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from dumpunet.analyzer.color.spec import DIFF_COLOR, ColorSpec
from dumpunet.analyzer.cluster import optional_client
from dumpunet.analyzer.damage import Damage
from dumpunet.analyzer.dask_run import Source
from dumpunet.analyzer.export import write_tensors
from dumpunet.analyzer.output import OutputFolder, WrittenFile
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.png import encode_png, resolve_encoder
from dumpunet.analyzer.pool import check_jobs, progress_bar
from dumpunet.analyzer.render import write_grids
from dumpunet.analyzer.render_plan import Target, plan_grids
from dumpunet.analyzer.scope import AutoRanges
from dumpunet.analyzer.selection import DiffSelection, DiffStats, Slab, select_pair, select_stores
from dumpunet.analyzer.step_table import step_table
from dumpunet.analyzer.style import GridStyle
from dumpunet.analyzer.tensor_files import check_format
from dumpunet.errors import DamagedChunkError, OptionError, SelectionError
from dumpunet.specs import format_ints
from dumpunet.store import Store, open_store

__all__ = ["SUMMARY_COLUMNS", "diff", "final_difference", "final_images", "summary_chart", "summary_rows"]

SUMMARY_COLUMNS = ("block", "step", "image", "guidance", "mean_abs_diff", "base_mean_abs", "relative")


def diff(
    store: Store | str | os.PathLike[str],
    pick: Pick = Pick(),
    color: ColorSpec = DIFF_COLOR,
    style: GridStyle = GridStyle(),
    *,
    out: str | os.PathLike[str],
    pair: str | None = None,
    base: Store | str | os.PathLike[str] | None = None,
    base_run: str | None = None,
    finals: bool = True,
    export: str | None = None,
    jobs: int | None = None,
    progress: bool = True,
    png_encoder: str | None = None,
    skip_damaged: bool = False,
    scheduler: str | None = None,
) -> list[WrittenFile]:
    """Render ``layered - base`` of a pair (or ``store - base`` of two stores), its summary and the final images.

    Parameters
    ----------
    store
        A store with paired runs (path, URL or :class:`~dumpunet.Store`); with ``base``, any store.
    pick
        What to compare, as for :func:`~dumpunet.analyzer.render.render`; ``run`` only with
        ``base`` (the run of ``store``; default its only or first run): a pair names both runs.
    color
        The colorization; the default :data:`~dumpunet.analyzer.color.spec.DIFF_COLOR` is
        blue-white-red over ``[-m, m]``, ``m`` the grid's largest ``|layered - base|``
        (transform ``autosym``, scope ``block``): no change is white in every map whatever the
        scale of the data, and a norm average (never negative) runs from white to red.
    pair
        The pair's label (a sweep: the block name); default: the only or first pair.
    base, base_run
        Compare two stores instead of a pair's runs: the maps are ``store - base`` (a LoRA
        against the base model, sampler A against B, seed A against B, two checkpoints of one
        architecture). ``base_run``: its run (default: the run of the same name, or its default
        run). Both must have the same blocks with the same shapes, guidance halves and the
        picked steps (matched by step number), or a readable error says what differs.
    finals
        Also write the final images of both runs and their pixel difference (both runs must
        have finished).
    export
        Also write the ``layered - base`` tensors as ``bin``, ``npy`` or ``safetensors`` files
        (:func:`~dumpunet.analyzer.export.write_tensors`), as the original's "Dump difference
        tensors to files" did.
    style, jobs, progress, png_encoder, skip_damaged
        As for :func:`~dumpunet.analyzer.render.render`; a skipped map (a chunk of either run
        damaged) also has no row in ``summary.csv``.
    scheduler
        As for :func:`~dumpunet.analyzer.render.render`: the maps, the tensor files and the
        summary's statistics are computed on dask workers, which read the runs; the final
        images (one small array per run and image) are read here.

    Returns every file written: the maps, the tensor files, then ``summary.csv``, ``summary.png``
    and the finals.

    Examples
    --------
    >>> files = dumpunet.diff("girl.zarr", Pick(blocks="IN00-OUT11", steps="1-20"),
    ...                       ColorSpec("Red/Blue", "linear"), out="diff")  # doctest: +SKIP
    >>> [f.path.name for f in files][-2:]  # doctest: +SKIP
    ['final-diff-img0.png', 'final-diff-norm-img0.png']
    """
    style.check(pick, color)
    if export is not None:
        check_format(export)
    encoder = resolve_encoder(png_encoder)
    jobs = check_jobs(jobs)
    damage = Damage(skip_damaged)
    st = store if isinstance(store, Store) else open_store(store)
    if base is None:
        if base_run is not None:
            raise OptionError("base_run= names a run of the base store: give base= too")
        sel = select_pair(st, pick, pair=pair)
        source = Source.of(st, pick, pair=pair, diff=True)
    else:
        if pair is not None:
            raise OptionError("pair= compares the two runs of a pair in one store, base= two stores: give one")
        base_st = base if isinstance(base, Store) else open_store(base)
        sel = select_stores(st, pick, base_st, base_run=base_run)
        source = Source.of(st, pick, against=(base_st, base_run))
    pictures = final_images(sel) if finals else {}
    target = Target(sel, OutputFolder(out), AutoRanges(color), source)
    with optional_client(scheduler, jobs) as client, \
            progress_bar(len(sel) * len(style.drawn()), progress, unit="png", desc="render") as bar:
        tasks, basis = plan_grids([target], color, style, status=bar.set_description, damage=damage)
        with target.output as output:
            files = write_grids(tasks, color, basis, jobs=jobs, encoder=encoder,
                                on_done=lambda _: bar.update(1), damage=damage, client=client)
            if export is not None:
                files += write_tensors(sel, output, export, damage=damage, client=client, source=source, jobs=jobs)
            rows = summary_rows(sel, damage, client=client, source=source)
            files += _write_summary_and_finals(output, sel, rows, pictures, encoder)
    damage.report()
    return files


def _write_summary_and_finals(
    output: OutputFolder, sel: DiffSelection, rows: list[dict[str, Any]],
    pictures: dict[int, tuple[np.ndarray, np.ndarray]], encoder: str,
) -> list[WrittenFile]:
    common = {"store": str(sel.store.path.resolve()), "pair": sel.pair["label"], "base_run": sel.base.name,
              "run": sel.run.name}
    written = [output.write("summary.csv", _csv(rows), {"kind": "diff-summary", **common, "which": sel.which,
                                                         "columns": list(SUMMARY_COLUMNS), "rows": len(rows)})]
    image, legend = summary_chart(sel, rows)
    written.append(output.write(
        "summary.png", encode_png(image, encoder=encoder),
        {"kind": "diff-summary-chart", **common, "which": sel.which, "size": [image.shape[1], image.shape[0]],
         "images": format_ints(sel.images), "guidance": [g for g, _ in sel.guidance], "legend": legend}))
    for i, (base, layered) in pictures.items():
        written.append(output.write(f"final-base-img{i}.png", encode_png(base, encoder=encoder),
                                    {"kind": "final", **common, "run": sel.base.name, "image": i}))
        written.append(output.write(f"final-layered-img{i}.png", encode_png(layered, encoder=encoder),
                                    {"kind": "final", **common, "image": i}))
        d, norm = final_difference(base, layered)
        top = int(d.max())
        written.append(output.write(f"final-diff-img{i}.png", encode_png(d, encoder=encoder),
                                    {"kind": "final-diff", **common, "image": i, "max": top,
                                     "mean": float(d.mean(dtype=np.float64))}))
        written.append(output.write(f"final-diff-norm-img{i}.png", encode_png(norm, encoder=encoder),
                                    {"kind": "final-diff-normalized", **common, "image": i, "max": top}))
    return written


def final_difference(base: np.ndarray, layered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``|layered - base|`` of two uint8 images, and the same stretched so that its largest value is 255.

    >>> final_difference(np.array([10, 20], np.uint8), np.array([13, 14], np.uint8))
    (array([3, 6], dtype=uint8), array([128, 255], dtype=uint8))
    """
    d = np.abs(layered.astype(np.int16) - base.astype(np.int16)).astype(np.uint8)
    top = int(d.max())
    return d, ((d.astype(np.uint32) * 255 + top // 2) // top).astype(np.uint8) if top else d


def final_images(sel: DiffSelection) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The final images ``{image: (base, layered)}`` of the selected images; refuse unfinished runs."""
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in sel.images:
        pictures = []
        for r in (sel.base, sel.run):
            try:
                pictures.append(r.image(i))
            except SelectionError as exc:
                raise SelectionError(f"{exc}; diff its recorded steps without the final images (--no-finals)") from None
        base, layered = pictures
        if base.shape != layered.shape:
            raise SelectionError(
                f"final image {i} is {base.shape[1]}x{base.shape[0]} in run {sel.base.name!r} but "
                f"{layered.shape[1]}x{layered.shape[0]} in run {sel.run.name!r}; diff them with --no-finals"
            )
        out[i] = (base, layered)
    return out


def summary_rows(sel: DiffSelection, damage: Damage | None = None, *, client: Any = None,
                 source: Source | None = None) -> list[dict[str, Any]]:
    """One row per slab (blocks in U-Net order, then steps, images, halves): the columns of ``summary.csv``.

    A slab whose chunk is damaged raises, or with ``damage.skip`` has no row. With a dask
    ``client``, each slab's statistics are computed on a worker that opens ``source``.
    """
    damage = damage or Damage()
    slabs = list(sel.slabs("block"))
    if client is not None:
        from dumpunet.analyzer.dask_run import note_damage, run_on_dask

        def finish(slab: Slab, result: Any) -> DiffStats | None:
            if isinstance(result, DamagedChunkError):
                note_damage(damage, slab, result)
                return None
            return result

        stats: list[DiffStats | None] = []
        run_on_dask(client, slabs, lambda slab: (_slab_stats, source, slab), finish, done=stats)
    else:
        stats = [damage.attempt(slab, lambda slab=slab: sel.stats(slab)) for slab in slabs]
    rows = []
    for slab, s in zip(slabs, stats, strict=True):
        if s is None:
            continue
        rows.append({"block": slab.block, "step": slab.step, "image": slab.image, "guidance": slab.guidance,
                     "mean_abs_diff": s.mean_abs_diff, "base_mean_abs": s.base_mean_abs, "relative": s.relative})
    return rows


def _slab_stats(sel: DiffSelection, slab: Slab) -> DiffStats:
    return sel.stats(slab)


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue().encode()


def summary_chart(sel: DiffSelection, rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The block x step heatmap of ``relative`` (mean over images and halves) and the blocks by peak.

    Rows are the blocks in U-Net order, columns the steps (:func:`~dumpunet.analyzer.step_table.step_table`);
    the legend lists ``{"label", "peak"}`` (the block's largest finite value, None if none), largest first.
    """
    by_block: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_block[row["block"]][row["step"]].append(row["relative"])
    table = {b: {s: math.fsum(v) / len(v) for s, v in steps.items()} for b, steps in by_block.items()}
    peaks = {b: max((x for x in v.values() if math.isfinite(x)), default=None) for b, v in table.items()}
    legend = [{"label": b, "peak": peaks[b]}
              for b in sorted(table, key=lambda b: -peaks[b] if peaks[b] is not None else math.inf)]
    halves = ", ".join(g for g, _ in sel.guidance)
    what = "block input" if sel.which == "input" else "block"
    pair = "" if sel.pair["label"] == sel.run.name else f" (pair {sel.pair['label']})"
    title = f"{sel.label}: how much each {what} changed, run {sel.run.name} vs {sel.base.name}{pair}"
    measure = "mean |layered - base| / mean |base| per block (rows) and step (columns)"
    if len(sel.images) > 1 or len(sel.guidance) > 1:
        measure += f", mean over images {format_ints(sel.images)}; {halves}"
    else:
        measure += f", image {sel.images[0]}, {halves}"
    if not table:
        table = {"(none)": {}}
    image = step_table(table, lines=[title, measure + "; white: the base is 0 (inf)"])
    return image, legend

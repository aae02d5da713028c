"""Planning a render: grid layout options, the PCA basis, Auto ranges, file names and entries.

:func:`plan_grids` does everything a render does before its first pixel: it fits or loads the
PCA basis, runs the Auto first pass (:mod:`.scope`), and names every file with its manifest
entry, so a mistake fails before any folder is made. :mod:`.render` then draws and writes.

File names say what a file shows: ``{block}[-input]-step{step:03}-img{image}-{guidance}``, then
``-ch{channels}`` for a channel subset, ``-avg-{mean|1norm|2norm|l1|l2}``, ``-x{scale}`` for a given
scale above 1 (the automatic one of labelled grids is in the manifest only), and the colorization
(:meth:`ColorSpec.slug`: its parameters readably, or ``pca-{basis digest}``)::

    OUT11-step020-img0-cond-hsl-auto01.png
    OUT11-step020-img0-cond-wb-sigmoid-g1.5-o0.png
    M00-step020-img0-cond-avg-2norm-hsl-auto01.png

A hash appears only where text cannot be a name part as it is (a long channel set, Custom
expressions other than the defaults): two files share a name only if they hold the same pixels.

Each manifest entry holds the slab's parameters, ``grid`` (columns, rows, tile size, the scale
used, gap), ``size`` (the picture's width and height as drawn), ``labels`` (False for
``GridStyle.plain``), the colorization or PCA basis, ``range`` (a shared Auto range) and, for
labelled grids, ``colorbar``: the ``min`` and ``max`` of the colour bar and what they span
(:func:`~dumpunet.analyzer.grid_labels.bar_info`).

With ``GridStyle.with_grid`` each slab gets both: the averaged map, then the channel grid, each
with its own Auto ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dumpunet.analyzer import pca
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.analyzer.damage import Damage
from dumpunet.analyzer.dask_run import Source
from dumpunet.analyzer.grid import grid_shape, grid_size
from dumpunet.analyzer.output import OutputFolder, name_part, output_path
from dumpunet.analyzer.reduce import average_label, channel_average
from dumpunet.analyzer.scope import AutoRanges, json_range
from dumpunet.analyzer.selection import Selection, Slab
from dumpunet.analyzer.style import GridStyle
from dumpunet.errors import OptionError, OutputError, SelectionError
from dumpunet.specs import format_ints
from dumpunet.store.readahead import read_ahead

__all__ = ["GridTask", "Target", "folders", "grid_layout", "plan_grids", "prepare_basis", "read_maps"]

@dataclass
class Target:
    """One selection and the folder its files go to."""

    sel: Selection
    output: OutputFolder
    ranges: AutoRanges
    source: Source | None = None
    """How a dask worker opens ``sel`` by itself (:mod:`.dask_run`); None: local work only."""


@dataclass(frozen=True)
class GridTask:
    """One file to draw: which slab of which target, its name and manifest entry."""

    target: Target
    slab: Slab
    style: GridStyle
    name: str
    entry: dict[str, Any] = field(hash=False)


def read_maps(sel: Selection, slab: Slab, average: str | None) -> np.ndarray:
    """The maps ``[N, H, W]`` that one grid shows: the selected channels, or their average."""
    x = sel.read(slab)
    if average is not None:
        return channel_average(x, average)[None]
    return x


def plan_grids(
    targets: Sequence[Target],
    color: ColorSpec,
    style: GridStyle,
    *,
    status: Callable[[str], None] = lambda _: None,
    damage: Damage | None = None,
) -> tuple[list[GridTask], pca.Basis | None]:
    """Fit or load the PCA basis, run the Auto first pass, and plan every file of every target.

    With ``style.with_grid`` every slab gets two files: the averaged map, then the channel grid.
    A slab whose chunk is damaged raises, or with ``damage.skip`` is left out (of the ranges,
    the basis and the files).
    """
    damage = damage or Damage()
    basis = (prepare_basis([t.sel for t in targets], style.pca_basis, status=status, damage=damage)
             if color.pca else None)
    # with_grid draws each slab twice (average, then channels): each drawing has its own Auto ranges
    planned = [(t if i == 0 else replace(t, ranges=AutoRanges(color)), s)
               for t in targets for i, s in enumerate(style.drawn())]
    for t, s in planned:
        if t.ranges.first_pass:
            status("ranges")
            with read_ahead(t.sel.slabs(), t.sel.chunks) as slabs:
                for slab in slabs:
                    maps = damage.attempt(slab, lambda: read_maps(t.sel, slab, s.average))  # noqa: B023 - called at once
                    if maps is not None:
                        t.ranges.add(maps, **_group(slab))
    status("render")
    tasks = [_task(t, slab, color, s, basis) for t, s in planned for slab in t.sel.slabs() if not damage.skipped(slab)]
    return tasks, basis


def grid_layout(sel: Selection, n: int, h: int, w: int) -> tuple[int, int]:
    """``(cols, rows)`` of ``n`` tiles of ``h x w``: the original's layout at the run's image size."""
    size = (sel.run.info.height, sel.run.info.width)
    return grid_shape(n, h, w, image=size if None not in size else None)


def _group(slab: Slab) -> dict[str, Any]:
    return {"step": slab.step, "image": slab.image, "guidance": slab.guidance}


def _channels_label(sel: Selection, block: str) -> str | None:
    chosen = sel.channels[block]
    if chosen is None:
        return None
    text = format_ints(chosen).replace(",", "_")
    return text if len(text) <= 24 else "set" + hashlib.sha256(text.encode()).hexdigest()[:6]


def _task(t: Target, slab: Slab, color: ColorSpec, style: GridStyle, basis: pca.Basis | None) -> GridTask:
    sel = t.sel
    c, h, w = sel.shape(slab.block)
    n = 1 if style.average is not None or color.pca else c
    cols, rows = grid_layout(sel, n, h, w)
    k = style.tile_scale(h, w)
    height, width = grid_size(cols, rows, h, w, k)
    name_part(slab.block, "block")
    parts = [sel.file_stem(slab)]
    label = _channels_label(sel, slab.block)
    if label:
        parts.append(f"ch{label}")
    if style.average is not None:
        parts.append(average_label(style.average))
    if style.scale not in (None, 1):  # an automatic scale stays out of the name (the manifest has it)
        parts.append(f"x{style.scale}")
    entry: dict[str, Any] = sel.describe()
    entry.update(slab.params())
    entry.update(
        channels=sel.channel_text(slab.block),
        grid={"cols": cols, "rows": rows, "tile": [h, w], "scale": k, "gap": 1},
        size=[width, height],  # the bare grid's; a labelled one's is set as it is drawn
        labels=not style.plain,
        mode="L" if color.grayscale else "RGB",
        average=style.average,
    )
    if basis is not None:
        key = sel.basis_key(slab.block)
        digest = basis[key].digest
        parts.append(f"pca-{digest}")
        entry["colorization"] = None
        entry["pca"] = {
            "key": key,
            "digest": digest,
            "basis": str(style.pca_basis.resolve()) if style.pca_basis is not None else None,
        }
    else:
        slug = color.slug()
        parts.append(slug)
        entry["colorization"] = {**json.loads(color.to_json()), "slug": slug}
        entry["pca"] = None
    planned = t.ranges.planned(**_group(slab))
    if planned is not None:
        entry["range"] = json_range(planned)
    return GridTask(t, slab, style, "-".join(parts) + ".png", entry)


def prepare_basis(
    sels: Sequence[Selection],
    path: Path | None,
    *,
    status: Callable[[str], None] = lambda _: None,
    damage: Damage | None = None,
) -> pca.Basis:
    """Load the PCA basis file, fit the blocks it lacks (or all, without a file), save it.

    With ``damage.skip``, slabs whose chunk is damaged are left out of the fit.
    """
    damage = damage or Damage()
    need: dict[str, tuple[int, Selection]] = {}
    for sel in sels:
        for block in sel.blocks:
            key = sel.basis_key(block)
            c = sel.shape(block)[0]
            prev = need.setdefault(key, (c, sel))
            if prev[0] != c:
                raise SelectionError(
                    f"block {key} has {prev[0]} channels in {prev[1].store.path} but {c} in {sel.store.path}; "
                    "one PCA basis cannot colour both"
                )
    if path is not None and not path.exists() and not path.resolve().parent.is_dir():
        raise OutputError(f"cannot save the PCA basis {path}: folder {path.parent} does not exist")
    basis = pca.Basis.load(path) if path is not None and path.exists() else pca.Basis()
    for key, (c, sel) in need.items():
        if key in basis and basis[key].channels != c:
            raise OptionError(
                f"PCA basis {path} was fitted on {basis[key].channels} channels for {key}, "
                f"but {sel.store.path} has {c}"
            )
    missing = [key for key in need if key not in basis]
    if not missing:
        return basis
    status("fit pca")
    for key in missing:
        slabs = [(sel, sl) for sel in sels for sl in sel.slabs("block") if sel.basis_key(sl.block) == key]
        per = -(-pca.MAX_SAMPLES // len(slabs))
        rng = pca.seeded_rng(key)
        with read_ahead(slabs, lambda pair: pair[0].chunks(pair[1])) as ordered:
            read = [(sl, damage.attempt(sl, lambda sel=sel, sl=sl: sel.read(sl))) for sel, sl in ordered]
        maps = [x for _, x in read if x is not None]
        if not maps:
            raise SelectionError(f"every selected map of {key} is damaged; there is nothing to fit its PCA basis on")
        samples = np.concatenate([pca.sample_pixels(x, per, rng) for x in maps])
        meta = {
            "stores": sorted({str(sel.store.path.resolve()) for sel, _ in slabs}),
            "steps": format_ints({sl.step for _, sl in slabs}),
        }
        basis[key] = pca.fit_basis(samples, meta)
    if path is not None:
        basis.save(path)
    return basis


def folders(sels: Sequence[Selection], out: str | os.PathLike[str]) -> list[Path]:
    """The folder of each selection's files: ``out``, or ``out/<store name>`` for several stores."""
    out = Path(out)
    if len(sels) == 1:
        return [out]
    seen: dict[str, Path] = {}
    for sel in sels:
        other = seen.setdefault(sel.label, sel.store.path)
        if other != sel.store.path:
            raise OptionError(
                f"stores {other} and {sel.store.path} would both render into {out / sel.label}; "
                "rename one or render them separately"
            )
    return [output_path(out, sel.label) for sel in sels]

"""Render any selection of a store as PNG grids, one per (block, step, image, guidance half).

Each channel of a block's ``[C, H, W]`` output is one tile of a grid laid out as the original
extension did (:mod:`.grid`: channel 0 top left, row by row, 1-pixel black gaps), coloured by a
:class:`~dumpunet.analyzer.color.colorize.ColorSpec`. ``average`` draws one map per block instead
(:func:`~dumpunet.analyzer.reduce.channel_average`); ``method="pca"`` colours each pixel by the
block's top three principal components (:mod:`.pca`).

The Auto transforms normalize by a minimum and maximum taken over ``auto_scope``:

===========  ========================================================================
``channel``  each tile its own range (the original's behaviour)
``block``    one range over all (selected) channels of the grid
``step``     one range over every selected block of the step, per image and guidance half
``run``      one range over everything selected from the run (a first pass reads it all)
===========  ========================================================================

File names say what a file shows: ``{block}[-input]-step{step:03}-img{image}-{guidance}``, then
``-ch{channels}`` for a channel subset, ``-avg-{mean|1norm|2norm|l1|l2}``, ``-x{scale}`` for a scale
above 1, and the colorization (:meth:`ColorSpec.slug`, or ``pca-{basis digest}``)::

    OUT11-step020-img0-cond-custom-hsl-auto01-4079ce.png
    M00-step020-img0-cond-avg-2norm-custom-hsl-auto01-4079ce.png

A ``manifest.json`` beside them lists every file with its parameters (:mod:`.output`).

The pipeline (:func:`render_selections`) renders whatever a selection's ``read`` returns and
names files by its ``file_stem``: :mod:`.diff` passes a
:class:`~dumpunet.analyzer.selection.DiffSelection`, whose maps are ``layered - base`` and whose
files are ``diff-OUT11-step020-...``.

How the work runs: a pool of ``jobs`` threads each takes one file at a time: read the chunk, run
the colorize and tile kernels (numba, without the GIL, one thread each), encode the PNG (deflate
is most of the time and also runs without the GIL) and write it. So every core stays busy and
throughput scales with cores. On numba's ``workqueue`` threading layer, which is not
thread-safe, kernel calls take turns behind a lock while encoding stays parallel.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dumpunet.analyzer import pca
from dumpunet.analyzer.color.colorize import ColorSpec, colorize, map_ranges, merge_ranges
from dumpunet.analyzer.grid import grid_shape, grid_size, tile
from dumpunet.analyzer.output import Manifest, WrittenFile, check_folder, prepare_folder, write_atomic
from dumpunet.analyzer.png import encode_png, resolve_encoder
from dumpunet.analyzer.pool import default_jobs, kernel_lock, run_parallel, scratch
from dumpunet.analyzer.reduce import AVERAGES, channel_average
from dumpunet.analyzer.selection import Selection, Slab, select
from dumpunet.errors import ColorSpecError, DumpUnetError
from dumpunet.specs import format_ints
from dumpunet.store import Store, open_store

__all__ = ["AVERAGES", "RenderOptions", "check_jobs", "render", "render_options", "render_selections", "render_with"]

StoreLike = Store | str | os.PathLike[str]


@dataclass(frozen=True)
class RenderOptions:
    """What to render and how; validated on construction. See :func:`render` for the fields."""

    blocks: str = ""
    steps: str = ""
    images: str = ""
    guidance: str = "cond"
    channels: str = ""
    scale: int = 1
    average: str | None = None
    which: str = "output"
    run: str | None = None
    color: ColorSpec = field(default_factory=ColorSpec)
    pca: bool = False
    pca_basis: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ColorSpecError(f"scale must be a whole number of at least 1, got {self.scale!r}")
        if self.average is not None and self.average not in AVERAGES:
            raise ColorSpecError(f"unknown channel average {self.average!r} (valid: {', '.join(AVERAGES)})")
        if self.pca and self.average is not None:
            raise ColorSpecError("method pca colours the channel vectors; it cannot be combined with an average")
        if self.pca and self.channels.strip():
            raise ColorSpecError("method pca uses every channel (the basis spans them all); leave channels empty")
        if self.pca_basis is not None and not self.pca:
            raise ColorSpecError("a PCA basis file needs method pca")

    @property
    def auto(self) -> bool:
        return not self.pca and self.color.transform.startswith("auto")

    @property
    def scope(self) -> str:
        return self.color.auto_scope if self.auto else "none"


@dataclass
class _Target:
    sel: Selection
    folder: Path
    manifest: Manifest
    ranges: dict[tuple[Any, ...], tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Task:
    target: _Target
    slab: Slab
    path: Path
    entry: dict[str, Any]


def render(
    stores: StoreLike | Sequence[StoreLike],
    *,
    out: str | os.PathLike[str],
    blocks: str = "",
    steps: str = "",
    images: str = "",
    guidance: Literal["cond", "uncond", "both"] = "cond",
    channels: str = "",
    scale: int = 1,
    average: Literal["mean", "1-norm", "2-norm", "l1", "l2"] | None = None,
    which: Literal["output", "input"] = "output",
    run: str | None = None,
    method: str = "Custom",
    transform: str = "auto01",
    clamp_min: float = -1.0,
    clamp_max: float = 1.0,
    gain: float = 1.0,
    offset: float = 0.0,
    space: str = "hsl",
    r: str = "abs(v)",
    g: str = "abs(v)",
    b: str = "abs(v)",
    h: str = "(2+v)/3",
    s: str = "1.0",
    l: str = "0.5",  # noqa: E741 - the original's name for lightness
    auto_scope: Literal["channel", "block", "step", "run"] = "channel",
    pca_basis: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
    progress: bool = True,
    png_encoder: Literal["libdeflate", "zlib", "pillow"] | None = None,
) -> list[WrittenFile]:
    """Render blocks of one or several stores to PNG files in ``out``; return the files written.

    Parameters
    ----------
    stores
        A store (path or :class:`~dumpunet.Store`) or several; several go to ``out/<store name>/``.
    blocks, steps, images, channels
        Specs (``"IN00-OUT11(+2)"``, ``"1,5,10"``, ``"0-15"``); empty selects every recorded
        block, every complete step, every image, every channel.
    guidance
        ``"cond"``, ``"uncond"`` or ``"both"`` halves of classifier-free guidance.
    scale
        Enlarge each tile ``scale`` times (nearest neighbour).
    average
        ``"mean"``, ``"1-norm"``, ``"2-norm"`` (both divided by the channel count, as in the
        original), ``"l1"`` or ``"l2"`` over channels: one map per block instead of a grid.
    which
        ``"output"`` or ``"input"`` (block inputs, where they were recorded).
    method, transform, clamp_min, clamp_max, gain, offset, space, r, g, b, h, s, l, auto_scope
        The colorization (:class:`~dumpunet.analyzer.color.colorize.ColorSpec`); ``method="pca"``
        colours by principal components instead.
    pca_basis
        A basis file: reused if it exists (blocks it lacks are fitted and added), else fitted
        on this selection and saved, so later renders and other stores share its colours.
    jobs
        Worker threads, each reading, colouring, encoding and writing one file at a time
        (default: every CPU this process may use).
    progress
        Show one tqdm bar on stderr for all stores.
    png_encoder
        ``"libdeflate"``, ``"zlib"`` or ``"pillow"``; default: the fastest installed (:mod:`.png`).

    Examples
    --------
    >>> for gain in (0.5, 1, 2):  # doctest: +SKIP
    ...     dumpunet.render("girl.zarr", blocks="OUT00-OUT11", method="White/Black",
    ...                     transform="sigmoid", gain=gain, out="renders")
    """
    opts = render_options(
        blocks=blocks, steps=steps, images=images, guidance=guidance, channels=channels, scale=scale,
        average=average, which=which, run=run, method=method, transform=transform, clamp_min=clamp_min,
        clamp_max=clamp_max, gain=gain, offset=offset, space=space, r=r, g=g, b=b, h=h, s=s, l=l,
        auto_scope=auto_scope, pca_basis=pca_basis,
    )
    return render_with(stores, opts, out=out, jobs=jobs, progress=progress, png_encoder=png_encoder)


_COLOR_FIELDS = ("method", "transform", "clamp_min", "clamp_max", "gain", "offset", "space",
                 "r", "g", "b", "h", "s", "l", "auto_scope")


def render_options(**options: Any) -> RenderOptions:
    """The :class:`RenderOptions` of :func:`render`'s keyword options (the same names).

    Options left out take :class:`RenderOptions`' and :class:`ColorSpec`'s defaults, which are
    :func:`render`'s. ``method="pca"`` colours by principal components instead of a ColorSpec.
    """
    color = {k: options.pop(k) for k in _COLOR_FIELDS if k in options}
    is_pca = str(color.get("method", "")).strip().lower() == "pca"
    basis = options.pop("pca_basis", None)
    return RenderOptions(
        **options,
        color=ColorSpec() if is_pca else ColorSpec(**color),
        pca=is_pca,
        pca_basis=Path(basis) if basis is not None else None,
    )


def render_with(
    stores: StoreLike | Sequence[StoreLike],
    opts: RenderOptions,
    *,
    out: str | os.PathLike[str],
    jobs: int | None = None,
    progress: bool = True,
    png_encoder: str | None = None,
) -> list[WrittenFile]:
    """:func:`render` with the options as one :class:`RenderOptions`."""
    encoder = resolve_encoder(png_encoder)
    jobs = check_jobs(jobs)
    opened = [s if isinstance(s, Store) else open_store(s) for s in _as_list(stores)]
    if not opened:
        raise DumpUnetError("no store to render")
    sels = [
        select(st, blocks=opts.blocks, steps=opts.steps, images=opts.images, guidance=opts.guidance,
               channels=opts.channels, which=opts.which, run=opts.run)
        for st in opened
    ]
    check_folder(out)
    folders = [check_folder(f) for f in _folders(sels, Path(out))]
    return render_selections(sels, folders, opts, jobs=jobs, progress=progress, encoder=encoder)


def check_jobs(jobs: int | None) -> int:
    """The worker count to use: ``jobs``, or every CPU for None; refuse anything but a whole number >= 1."""
    jobs = default_jobs() if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ColorSpecError(f"jobs must be a whole number of at least 1, got {jobs!r}")
    return jobs


def render_selections(
    sels: Sequence[Selection],
    folders: Sequence[Path],
    opts: RenderOptions,
    *,
    jobs: int,
    progress: bool,
    encoder: str,
) -> list[WrittenFile]:
    """Render checked selections, each into its folder (created here), on ``jobs`` threads.

    The pipeline behind :func:`render`, for anything that reads like a :class:`Selection` (a
    :class:`~dumpunet.analyzer.selection.DiffSelection` renders difference maps). The selection
    fields of ``opts`` are not used: the selections already say what to read.
    """
    targets = [_Target(sel, Path(folder), Manifest(Path(folder))) for sel, folder in zip(sels, folders)]

    bar = _progress_bar(sum(len(t.sel) for t in targets), progress)
    try:
        basis = _prepare_basis(targets, opts, bar) if opts.pca else None
        if opts.scope in ("step", "run"):
            _prepare_ranges(targets, opts, bar)
        for t in targets:
            prepare_folder(t.folder)
        tasks = [_task(t, slab, opts, basis) for t in targets for slab in t.sel.slabs()]
        done: list[_Task] = []
        lock = kernel_lock()
        try:
            run_parallel(tasks, lambda task: _work(task, opts, basis, encoder, lock), jobs=jobs, done=done,
                         on_done=lambda _: bar.update(1))
        finally:
            for t in targets:
                t.manifest.extend(task.entry for task in done if task.target is t)
                t.manifest.write()
    finally:
        bar.close()
    return [WrittenFile(task.path, task.entry) for task in done]


# ----------------------------------------------------------------------------- planning


def _as_list(stores: StoreLike | Sequence[StoreLike]) -> list[StoreLike]:
    if isinstance(stores, (str, os.PathLike, Store)):
        return [stores]
    return list(stores)


def _folders(sels: list[Selection], out: Path) -> list[Path]:
    if len(sels) == 1:
        return [out]
    seen: dict[str, Path] = {}
    for sel in sels:
        other = seen.setdefault(sel.label, sel.store.path)
        if other != sel.store.path:
            raise DumpUnetError(
                f"stores {other} and {sel.store.path} would both render into {out / sel.label}; "
                "rename one or render them separately"
            )
    return [out / sel.label for sel in sels]


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="png", desc="render", dynamic_ncols=True)


def _channels_label(sel: Selection, block: str) -> str | None:
    chosen = sel.channels[block]
    if chosen is None:
        return None
    text = format_ints(chosen).replace(",", "_")
    return text if len(text) <= 24 else "set" + hashlib.sha256(text.encode()).hexdigest()[:6]


def _maps(sel: Selection, slab: Slab, opts: RenderOptions) -> np.ndarray:
    """The maps ``[N, H, W]`` that one file shows: the selected channels, or their average."""
    x = sel.read(slab)
    if opts.average is not None:
        return channel_average(x, opts.average)[None]
    return x


def _scope_key(slab: Slab, scope: str) -> tuple[Any, ...]:
    return (slab.step, slab.image, slab.guidance) if scope == "step" else ()


def _prepare_ranges(targets: list[_Target], opts: RenderOptions, bar) -> None:
    """First pass for ``auto_scope`` step and run: the shared (min, max) of each group of maps."""
    bar.set_description("ranges")
    for t in targets:
        for slab in t.sel.slabs():
            key = _scope_key(slab, opts.scope)
            t.ranges[key] = merge_ranges(t.ranges.get(key, (math.nan, math.nan)), map_ranges(_maps(t.sel, slab, opts)))
    bar.set_description("render")


def _prepare_basis(targets: list[_Target], opts: RenderOptions, bar) -> pca.Basis:
    """Load the PCA basis file, fit the blocks it lacks (or all, without a file), save it."""
    need: dict[str, tuple[int, Selection]] = {}
    for t in targets:
        for block in t.sel.blocks:
            key = t.sel.basis_key(block)
            c = t.sel.shape(block)[0]
            prev = need.setdefault(key, (c, t.sel))
            if prev[0] != c:
                raise DumpUnetError(
                    f"block {key} has {prev[0]} channels in {prev[1].store.path} but {c} in {t.sel.store.path}; "
                    "one PCA basis cannot colour both"
                )
    path = opts.pca_basis
    if path is not None and not path.exists() and not path.resolve().parent.is_dir():
        raise DumpUnetError(f"cannot save the PCA basis {path}: folder {path.parent} does not exist")
    basis = pca.Basis.load(path) if path is not None and path.exists() else pca.Basis()
    for key, (c, sel) in need.items():
        if key in basis and basis[key].channels != c:
            raise DumpUnetError(
                f"PCA basis {path} was fitted on {basis[key].channels} channels for {key}, "
                f"but {sel.store.path} has {c}"
            )
    missing = [key for key in need if key not in basis]
    if not missing:
        return basis
    bar.set_description("fit pca")
    for key in missing:
        slabs = [(t.sel, sl) for t in targets for sl in t.sel.slabs("block") if t.sel.basis_key(sl.block) == key]
        per = -(-pca.MAX_SAMPLES // len(slabs))
        rng = pca.seeded_rng(key)
        samples = np.concatenate([pca.sample_pixels(sel.read(sl), per, rng) for sel, sl in slabs])
        meta = {
            "stores": sorted({str(sel.store.path.resolve()) for sel, _ in slabs}),
            "steps": format_ints({sl.step for _, sl in slabs}),
        }
        basis[key] = pca.fit_basis(samples, meta)
    if path is not None:
        basis.save(path)
    bar.set_description("render")
    return basis


def _task(t: _Target, slab: Slab, opts: RenderOptions, basis: pca.Basis | None) -> _Task:
    sel = t.sel
    c, h, w = sel.shape(slab.block)
    n = 1 if opts.average is not None or opts.pca else c
    size = (sel.run.info.height, sel.run.info.width)
    cols, rows = grid_shape(n, h, w, image=size if None not in size else None)  # the original's layout
    height, width = grid_size(cols, rows, h, w, opts.scale)
    parts = [sel.file_stem(slab)]
    label = _channels_label(sel, slab.block)
    if label:
        parts.append(f"ch{label}")
    if opts.average is not None:
        parts.append("avg-" + opts.average.replace("-", ""))
    if opts.scale != 1:
        parts.append(f"x{opts.scale}")
    entry: dict[str, Any] = sel.describe()
    entry.update(slab.params())
    entry.update(
        channels=sel.channel_text(slab.block),
        grid={"cols": cols, "rows": rows, "tile": [h, w], "scale": opts.scale, "gap": 1},
        size=[width, height],
        mode="L" if (opts.color.grayscale and not opts.pca) else "RGB",
        average=opts.average,
    )
    if basis is not None:
        key = sel.basis_key(slab.block)
        digest = basis[key].digest
        parts.append(f"pca-{digest}")
        entry["colorization"] = None
        entry["pca"] = {
            "key": key,
            "digest": digest,
            "basis": str(opts.pca_basis.resolve()) if opts.pca_basis is not None else None,
        }
    else:
        slug = opts.color.slug()
        parts.append(slug)
        entry["colorization"] = {**_color_fields(opts.color), "slug": slug}
        entry["pca"] = None
    if opts.scope in ("step", "run"):
        entry["range"] = _json_range(t.ranges[_scope_key(slab, opts.scope)])
    name = "-".join(parts) + ".png"
    return _Task(t, slab, t.folder / name, {"file": name, **entry})


def _color_fields(spec: ColorSpec) -> dict[str, Any]:
    return json.loads(spec.to_json())


def _json_range(rng: tuple[float, float]) -> list[float] | None:
    return None if math.isnan(rng[0]) else [float(rng[0]), float(rng[1])]


# ----------------------------------------------------------------------------- the work


def _image(task: _Task, opts: RenderOptions, basis: pca.Basis | None) -> np.ndarray:
    """Read one slab and return its grid image (uint8 [H, W] or [H, W, 3])."""
    t, slab = task.target, task.slab
    grid = task.entry["grid"]
    if basis is not None:
        pixels = basis[task.entry["pca"]["key"]].project(t.sel.read(slab))[None]
    else:
        maps = _maps(t.sel, slab, opts)
        minmax = None
        if opts.scope == "block":
            minmax = merge_ranges(map_ranges(maps))
            task.entry["range"] = _json_range(minmax)
        elif opts.scope in ("step", "run"):
            minmax = t.ranges[_scope_key(slab, opts.scope)]
        rgb = () if opts.color.grayscale else (3,)
        pixels = colorize(maps, opts.color, minmax=minmax, out=scratch("pixels", (*maps.shape, *rgb)))
    width, height = task.entry["size"]
    out = scratch("grid", (height, width, *pixels.shape[3:]))
    return tile(pixels, grid["cols"], grid["rows"], opts.scale, out=out)


def _work(task: _Task, opts: RenderOptions, basis: pca.Basis | None, encoder: str, lock) -> _Task:
    """Make one grid, encode it and write it atomically; runs on a pool thread."""
    with lock:
        image = _image(task, opts, basis)
    data = encode_png(image, encoder=encoder, scratch=scratch("filtered", (image.size + image.shape[0],)))
    write_atomic(task.path, data)
    return task

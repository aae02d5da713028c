"""Render any selection of a store as channel grids: in memory, or as PNG files.

Each channel of a block's ``[C, H, W]`` output is one tile of a grid laid out as the original
extension did (:mod:`.grid`: channel 0 top left, row by row, 1-pixel black gaps), coloured by a
:class:`~dumpunet.analyzer.color.spec.ColorSpec` and, unless ``GridStyle.plain``, labelled
(:mod:`.grid_labels`). ``average`` draws one map per block instead
(:func:`~dumpunet.analyzer.reduce.channel_average`); ``method="PCA"`` colours each pixel by the
block's top three principal components (:mod:`.pca`). The Auto transforms normalize over
``auto_scope`` (:mod:`.scope`).

:func:`render_image` returns one grid as an array; :func:`render` writes one PNG per (block,
step, image, guidance half) of a :class:`~dumpunet.analyzer.pick.Pick`, named as
:mod:`.render_plan` says, with a ``manifest.json`` beside them (:mod:`.output`). Both draw with
:func:`draw_grid`, so a file holds exactly the array :func:`render_image` returns.

:func:`write_grids` renders whatever a selection's ``read`` returns and names files by its
``file_stem``: :mod:`.diff` passes a :class:`~dumpunet.analyzer.selection.DiffSelection`, whose
maps are ``layered - base`` and whose files are ``diff-OUT11-step020-...``.

How the work runs: a pool of ``jobs`` threads each takes one file at a time: read the chunk (of a
store at a URL, already requested while earlier files were drawn: :mod:`dumpunet.store.readahead`), run
the colorize and tile kernels (numba, without the GIL, one thread each), encode the PNG (deflate
is most of the time and also runs without the GIL) and write it. So every core stays busy and
throughput scales with cores. On numba's ``workqueue`` threading layer, which is not
thread-safe, kernel calls take turns behind a lock while encoding stays parallel. With
``scheduler`` the same per-file work (:func:`grid_png`) runs on dask workers instead, which open
the stores by path; this process writes what they send back (:mod:`.dask_run`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import numpy as np

from dumpunet.analyzer import pca
from dumpunet.analyzer.color.colorize import colorize
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.analyzer.cluster import optional_client
from dumpunet.analyzer.damage import Damage
from dumpunet.analyzer.dask_run import Source
from dumpunet.analyzer.grid import grid_size, tile
from dumpunet.analyzer.grid_labels import bar_info, label_grid, title_lines
from dumpunet.analyzer.output import OutputFolder, WrittenFile, check_folder
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.png import encode_png, resolve_encoder
from dumpunet.analyzer.pool import check_jobs, kernel_lock, progress_bar, run_parallel, scratch
from dumpunet.analyzer.render_plan import GridTask, Target, folders, grid_layout, plan_grids, prepare_basis, read_maps
from dumpunet.analyzer.scope import AutoRanges, json_range
from dumpunet.analyzer.selection import Selection, Slab, select
from dumpunet.analyzer.style import GridStyle
from dumpunet.analyzer.timeviews import FRAME_MS, check_time_view, write_animations, write_mosaics
from dumpunet.errors import DamagedChunkError, OptionError, SelectionError
from dumpunet.store import Store, open_store
from dumpunet.store.location import StoreUrl
from dumpunet.store.readahead import read_ahead

__all__ = ["draw_grid", "render", "render_image", "write_grids"]

StoreLike = Store | StoreUrl | str | os.PathLike[str]
Alloc = Callable[[str, tuple[int, ...]], np.ndarray]


def _fresh(name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, np.uint8)


def render_image(
    store: StoreLike,
    pick: Pick = Pick(),
    color: ColorSpec = ColorSpec(),
    style: GridStyle = GridStyle(),
) -> np.ndarray:
    """Return the grid of one block, step, image and guidance half as uint8 ``[H, W, 3]``.

    ``pick`` must select exactly one grid; the values are :func:`render`'s. White/Black grids
    come back with three equal channels. The Auto scopes ``step`` and ``run`` span what
    ``pick`` selects, so for one grid they equal ``block``; likewise method PCA without a
    basis file fits on this grid alone (pass ``style.pca_basis`` to colour as a larger render).

    Examples
    --------
    >>> img = dumpunet.render_image("girl.zarr", Pick(blocks="OUT11", steps="20"),
    ...                             ColorSpec("White/Black", "sigmoid"))  # doctest: +SKIP
    >>> img.shape, img.dtype  # doctest: +SKIP
    ((65, 129, 3), dtype('uint8'))
    """
    style.check(pick, color)
    if style.with_grid:
        raise OptionError("render_image draws one grid; with_grid writes the averaged map and the channel grid as "
                          "two files (render does), or call render_image with and without the average")
    sel = select(store if isinstance(store, Store) else open_store(store), pick)
    if len(sel) != 1:
        raise SelectionError(
            f"render_image draws one grid, but the pick selects {len(sel)} ({len(sel.blocks)} blocks x "
            f"{len(sel.steps)} steps x {len(sel.images)} images x {len(sel.guidance)} guidance halves); "
            "narrow blocks, steps, images or guidance"
        )
    basis = prepare_basis([sel], style.pca_basis) if color.pca else None
    slab = next(sel.slabs())
    ranges = AutoRanges(color)
    if ranges.first_pass:
        ranges.add(read_maps(sel, slab, style.average), step=slab.step, image=slab.image, guidance=slab.guidance)
    image, _ = draw_grid(sel, slab, color, style, ranges, basis)
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def draw_grid(
    sel: Selection,
    slab: Slab,
    color: ColorSpec,
    style: GridStyle,
    ranges: AutoRanges,
    basis: pca.Basis | None,
    alloc: Alloc = _fresh,
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Read one slab and draw its grid: uint8 ``[H, W]`` (White/Black) or ``[H, W, 3]``, and its Auto range.

    Unless ``style.plain``, the grid is labelled (:func:`~dumpunet.analyzer.grid_labels.label_grid`).

    ``alloc(name, shape)`` gives the uint8 arrays written into (pool threads reuse buffers).
    """
    if basis is not None:
        pixels = basis[sel.basis_key(slab.block)].project(sel.read(slab))[None]
        minmax = None
    else:
        maps = read_maps(sel, slab, style.average)
        minmax = ranges.minmax(maps, step=slab.step, image=slab.image, guidance=slab.guidance)
        rgb = () if color.grayscale else (3,)
        pixels = colorize(maps, color, minmax=minmax, out=alloc("pixels", (*maps.shape, *rgb)))
    n, h, w = pixels.shape[:3]
    cols, rows = grid_layout(sel, n, h, w)
    k = style.tile_scale(h, w)
    height, width = grid_size(cols, rows, h, w, k)
    grid = tile(pixels, cols, rows, k, out=alloc("grid", (height, width, *pixels.shape[3:])))
    if style.plain:
        return grid, minmax
    chosen = sel.channels[slab.block]
    numbers = None if n == 1 else (list(chosen) if chosen is not None else list(range(n)))
    lines = title_lines(sel, slab, color, average=style.average, scale=k)
    return label_grid(grid, lines=lines, tiles=numbers, cols=cols, cell=(h * k, w * k), color=color,
                      minmax=minmax), minmax


def render(
    stores: StoreLike | Sequence[StoreLike],
    pick: Pick = Pick(),
    color: ColorSpec = ColorSpec(),
    style: GridStyle = GridStyle(),
    *,
    out: str | os.PathLike[str],
    jobs: int | None = None,
    progress: bool = True,
    png_encoder: str | None = None,
    skip_damaged: bool = False,
    animate: str | None = None,
    mosaic: bool = False,
    frame_ms: int = FRAME_MS,
    scheduler: str | None = None,
) -> list[WrittenFile]:
    """Render what ``pick`` selects of one or several stores to PNG files in ``out``; return the files written.

    Parameters
    ----------
    stores
        A store (path or :class:`~dumpunet.Store`) or several; several go to ``out/<store name>/``.
    pick
        What to read (:class:`~dumpunet.analyzer.pick.Pick`): run, blocks, steps, images,
        guidance, channels, outputs or inputs; by default everything of the main run's cond half.
    color
        The colorization (:class:`~dumpunet.analyzer.color.spec.ColorSpec`); method ``PCA``
        colours by principal components instead.
    style
        The grid (:class:`~dumpunet.analyzer.style.GridStyle`): labelled by default (a title,
        channel numbers, a colour bar: :mod:`~dumpunet.analyzer.grid_labels`), ``plain`` draws
        the bare tiles; ``scale`` enlarges each tile (default: to at least 64 pixels, 1 if plain);
        ``average`` (``"mean"``, ``"1-norm"`` or ``"2-norm"`` over channels) draws one map per
        block instead, ``with_grid`` the channel grid too (a second file, as the original
        showed the averaged map beside the grid); ``pca_basis`` is a basis file for method PCA: reused if it exists
        (blocks it lacks are fitted and added), else fitted on this selection and saved, so
        later renders and other stores share its colours.
    jobs
        Worker threads, each reading, colouring, encoding and writing one file at a time
        (default: every CPU this process may use).
    progress
        Show one tqdm bar on stderr for all stores.
    png_encoder
        ``"libdeflate"``, ``"zlib"`` or ``"pillow"``; default: the fastest installed (:mod:`.png`).
    skip_damaged
        A map whose chunk is missing or damaged: by default a
        :class:`~dumpunet.errors.DamagedChunkError`; with True, a warning line on stderr, its
        file is not written, and a count of skipped maps at the end (:mod:`.damage`).
    animate, mosaic, frame_ms
        Instead of one file per grid: ``animate="png"`` (or ``"gif"``) one animation over the
        selected steps per block, image and guidance half, ``frame_ms`` a frame; ``mosaic`` one
        block x step mosaic per image and guidance half (:mod:`.timeviews`).
    scheduler
        Draw and encode on dask instead of the thread pool: ``"local"`` (a LocalCluster of
        ``jobs`` worker processes) or the address of a running scheduler, ``"tcp://HOST:PORT"``
        (:mod:`.cluster`). Workers open the stores by path and read the chunks; this process
        plans and writes, and the files are the thread pool's byte for byte (:mod:`.dask_run`).

    Examples
    --------
    >>> for gain in (0.5, 1, 2):  # doctest: +SKIP
    ...     dumpunet.render("girl.zarr", Pick(blocks="OUT00-OUT11"),
    ...                     ColorSpec("White/Black", "sigmoid", gain=gain), out="renders")
    """
    style.check(pick, color)
    check_time_view(animate, mosaic, frame_ms)
    encoder = resolve_encoder(png_encoder)
    jobs = check_jobs(jobs)
    damage = Damage(skip_damaged)
    listed = [stores] if isinstance(stores, (str, os.PathLike, StoreUrl, Store)) else list(stores)
    if not listed:
        raise OptionError("no store to render")
    sels = [select(s if isinstance(s, Store) else open_store(s), pick) for s in listed]
    if scheduler is not None and (animate is not None or mosaic):
        raise OptionError("--animate and --mosaic run in this process; drop --dask/--scheduler for them")
    check_folder(out)
    targets = [Target(sel, OutputFolder(f), AutoRanges(color), Source.of(sel.store, pick))
               for sel, f in zip(sels, folders(sels, out))]
    total = sum(len(sel) for sel in sels) * len(style.drawn())
    with optional_client(scheduler, jobs) as client, progress_bar(total, progress, unit="png", desc="render") as bar:
        tasks, basis = plan_grids(targets, color, style, status=bar.set_description, damage=damage)
        bar.update(total - len(tasks))  # skipped by the Auto first pass
        with ExitStack() as stack:
            for t in targets:
                stack.enter_context(t.output)
            if animate is not None:
                files = write_animations(tasks, color, basis, fmt=animate, frame_ms=frame_ms, damage=damage)
            elif mosaic:
                files = write_mosaics(tasks, color, basis, encoder=encoder, damage=damage)
            else:
                files = write_grids(tasks, color, basis, jobs=jobs, encoder=encoder,
                                    on_done=lambda _: bar.update(1), damage=damage, client=client)
    damage.report()
    return files


def write_grids(
    tasks: Sequence[GridTask],
    color: ColorSpec,
    basis: pca.Basis | None,
    *,
    jobs: int,
    encoder: str,
    on_done: Callable[[WrittenFile | None], None] | None = None,
    damage: Damage | None = None,
    client: Any = None,
) -> list[WrittenFile]:
    """Draw, encode and write planned grids (each in its task's style) on ``jobs`` threads into their
    (entered) output folders; a grid whose chunk is damaged raises, or with ``damage.skip`` is not written.

    With a dask ``client``, the workers draw and encode (each opening its target's ``source`` by
    path) and this process writes what they send back (:mod:`.dask_run`).
    """
    damage = damage or Damage()
    done: list[WrittenFile | None] = []
    if client is not None:
        from dumpunet.analyzer.dask_run import note_damage, run_on_dask

        shared = client.scatter(basis, broadcast=True) if basis is not None else None
        if any(task.target.source is None for task in tasks):
            raise OptionError("a dask render needs each target's source (how a worker opens its store)")

        def call(task: GridTask) -> tuple[Any, ...]:
            t = task.target
            return (grid_png, t.source, task.slab, color, task.style, t.ranges, shared, task.entry, encoder)

        def finish(task: GridTask, result: Any) -> WrittenFile | None:
            if isinstance(result, DamagedChunkError):
                note_damage(damage, task.slab, result)
                return None
            return task.target.output.write(task.name, *result)

        run_on_dask(client, tasks, call, finish, done=done, on_done=on_done)
        return [f for f in done if f is not None]
    lock = kernel_lock()

    def work(task: GridTask) -> WrittenFile | None:
        t = task.target
        drawn = damage.attempt(task.slab, lambda: grid_png(t.sel, task.slab, color, task.style, t.ranges, basis,
                                                           task.entry, encoder, lock=lock))
        return None if drawn is None else t.output.write(task.name, *drawn)

    with read_ahead(tasks, lambda task: task.target.sel.chunks(task.slab)) as items:
        run_parallel(items, work, jobs=jobs, done=done, on_done=on_done)
    return [f for f in done if f is not None]


def grid_png(
    sel: Selection,
    slab: Slab,
    color: ColorSpec,
    style: GridStyle,
    ranges: AutoRanges,
    basis: pca.Basis | None,
    entry: dict[str, Any],
    encoder: str,
    *,
    lock: AbstractContextManager[Any] | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """One planned grid as PNG bytes and its completed manifest entry (the local pool's and dask workers' work).

    ``lock`` is held while the kernels run (:func:`~dumpunet.analyzer.pool.kernel_lock`); a
    dask worker uses its process's (:func:`~dumpunet.analyzer.dask_run.worker_lock`).
    """
    if lock is None:
        from dumpunet.analyzer.dask_run import worker_lock

        lock = worker_lock()
    with lock:
        image, minmax = draw_grid(sel, slab, color, style, ranges, basis, alloc=scratch)
    entry = dict(entry)
    if ranges.scope == "block":
        entry["range"] = json_range(minmax)
    entry["size"] = [image.shape[1], image.shape[0]]
    if not style.plain:
        entry["colorbar"] = bar_info(color, minmax)
    data = encode_png(image, encoder=encoder, scratch=scratch("filtered", (image.size + image.shape[0],)))
    return data, entry

"""Export raw feature values of a selection as files other tools read.

==================  ===============================================================================
``bin``             the original extension's dump: one file per channel, ``H*W`` little-endian
                    float32 values in row-major order, no header, named
                    ``{image:03}-{block}-{step:03}-{channel:04}-{guidance}.bin``
                    (``{block}-input`` for block inputs), e.g. ``000-OUT11-020-0000-cond.bin``
``npy``             one file per block and step, ``{block}-step{step:03}.npy``: the array
                    ``[image, guidance, channel, y, x]`` of the selected images, guidance halves
                    and channels, in the stored dtype (float16 unless recorded with fp32)
``safetensors``     the same array as one tensor named ``features`` in
                    ``{block}-step{step:03}.safetensors``; the header's ``__metadata__`` (strings)
                    says ``block``, ``which``, ``step``, ``call``, ``timestep``, ``images``,
                    ``guidance`` (labels, comma-separated, in axis order), ``channels`` (spec),
                    ``dims`` (``image,guidance,channel,y,x``), ``store`` and ``run``
==================  ===============================================================================

The formats themselves are :mod:`.tensor_files`'s. :func:`write_tensors` writes any selection:
:func:`dumpunet.diff` passes its pair selection (``diff --export``), whose maps are ``layered -
base`` in float32; its npy and safetensors files are named ``diff-{block}-step{step:03}...``,
their metadata adds ``base_run`` and ``pair``, and its bin files keep the original's names (the
original dumped its difference tensors under the same names as features, into their own folder).
Attention layers are exported by :mod:`.attention_export`.
``manifest.json`` lists every file (:mod:`.output`); every file is written atomically.

Examples
--------
>>> dumpunet.export("girl.zarr", Pick(blocks="OUT11", steps="20"), format="bin", out="dump")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import groupby
from typing import Any, Literal

import numpy as np

from dumpunet.analyzer.cluster import optional_client
from dumpunet.analyzer.damage import Damage
from dumpunet.analyzer.dask_run import Source
from dumpunet.analyzer.output import OutputFolder, WrittenFile, name_part
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.pool import check_jobs, progress_bar, run_parallel
from dumpunet.analyzer.selection import Selection, Slab, select
from dumpunet.analyzer.tensor_files import (
    FORMATS,
    array_file,
    bin_bytes,
    bin_name,
    check_format,
)
from dumpunet.errors import DamagedChunkError
from dumpunet.store import Store, open_store
from dumpunet.store.readahead import read_ahead

__all__ = ["FORMATS", "export", "group_files", "write_tensors"]

Payload = tuple[str, bytes, dict[str, Any]]
"""One file to write: its name, its bytes and its manifest entry."""


def export(
    store: Store | str | os.PathLike[str],
    pick: Pick = Pick(),
    *,
    out: str | os.PathLike[str],
    format: Literal["bin", "npy", "safetensors"] = "bin",  # noqa: A002 - the CLI's --format
    progress: bool = True,
    skip_damaged: bool = False,
    scheduler: str | None = None,
    jobs: int | None = None,
) -> list[WrittenFile]:
    """Write what ``pick`` selects of a store to ``out`` as ``format`` files; return them.

    ``pick`` is :func:`dumpunet.render`'s (empty specs select everything). ``skip_damaged``:
    as for :func:`dumpunet.render`; an npy or safetensors file holding a damaged map is not
    written. ``jobs``: threads each reading, packing and writing one (block, step) at a time
    (default: every CPU); the files are the same for any count. ``scheduler`` (``"local"`` with
    ``jobs`` workers, or ``"tcp://HOST:PORT"``): each (block, step) is read and packed on a dask
    worker, and written here (:mod:`.dask_run`).

    Examples
    --------
    >>> files = dumpunet.export("girl.zarr", Pick(blocks="OUT11", steps="20"), format="npy", out="dump")  # doctest: +SKIP
    >>> np.load(files[0]).shape  # doctest: +SKIP
    (1, 1, 320, 64, 64)
    """
    check_format(format)
    jobs = check_jobs(jobs)
    damage = Damage(skip_damaged)
    sel = select(store if isinstance(store, Store) else open_store(store), pick)
    output = OutputFolder(out)
    source = Source.of(sel.store, pick)
    with optional_client(scheduler, jobs) as client, \
            progress_bar(len(sel.steps) * len(sel.blocks), progress, unit="map", desc="export") as bar, output:
        files = write_tensors(sel, output, format, on_done=lambda: bar.update(1), damage=damage, client=client,
                              source=source, jobs=jobs)
    damage.report()
    return files


def write_tensors(
    sel: Selection,
    output: OutputFolder,
    fmt: str,
    *,
    on_done: Callable[[], None] = lambda: None,
    damage: Damage | None = None,
    client: Any = None,
    source: Source | None = None,
    jobs: int = 1,
) -> list[WrittenFile]:
    """Write every (block, step) of ``sel`` as ``fmt`` files into the entered ``output``.

    A map whose chunk is damaged raises, or with ``damage.skip`` its files are not written.
    ``jobs`` threads (:func:`~dumpunet.analyzer.pool.run_parallel`) each take one (block, step);
    the files and the returned list (in (step, block) order) do not depend on the count.
    With a dask ``client``, each (block, step) is a task: a worker opens ``source`` (``sel``'s
    store by path), reads the maps and makes the files' bytes, and they are written here
    (:mod:`.dask_run`).
    """
    check_format(fmt)
    damage = damage or Damage()
    groups = [list(group) for _, group in groupby(sel.slabs(), key=lambda s: (s.step, s.block))]
    if client is not None:
        from dumpunet.analyzer.dask_run import note_damage, run_on_dask

        def finish(group: list[Slab], result: tuple[list[Payload], list[tuple[Slab, Exception]]]) -> list[WrittenFile]:
            payloads, damaged = result
            for slab, exc in damaged:
                note_damage(damage, slab, exc)
            return [output.write(*p) for p in payloads]

        batches: list[list[WrittenFile]] = []
        run_on_dask(client, groups, lambda group: (group_files, source, group, fmt), finish, done=batches,
                    on_done=lambda _: on_done())
        return [f for batch in batches for f in batch]

    def work(group: list[Slab]) -> list[WrittenFile]:
        # every map of the group is read before any is written, so each damaged one is named
        maps = {slab: damage.attempt(slab, lambda slab=slab: sel.read(slab)) for slab in group}
        return [output.write(*p) for p in _payloads(sel, maps, fmt)]

    batches: list[list[WrittenFile]] = []
    with read_ahead(groups, lambda group: [c for slab in group for c in sel.chunks(slab)]) as items:
        run_parallel(items, work, jobs=jobs, done=batches, on_done=lambda _: on_done())
    return [f for batch in batches for f in batch]


def group_files(sel: Selection, group: list[Slab], fmt: str) -> tuple[list[Payload], list[tuple[Slab, Exception]]]:
    """On a dask worker: the files of one (block, step) and the maps whose chunk is damaged (left out)."""
    maps: dict[Slab, np.ndarray | None] = {}
    damaged = []
    for slab in group:
        try:
            maps[slab] = sel.read(slab)
        except DamagedChunkError as exc:
            maps[slab] = None
            damaged.append((slab, exc))
    return _payloads(sel, maps, fmt), damaged


def _payloads(sel: Selection, maps: dict[Slab, np.ndarray | None], fmt: str) -> list[Payload]:
    """The files of one (block, step) as (name, bytes, manifest entry): bin per map read, else one file if all were."""
    if fmt == "bin":
        return [p for slab, x in maps.items() if x is not None for p in _bin_files(sel, slab, x)]
    if all(x is not None for x in maps.values()):
        return [_array_file(sel, maps, fmt)]
    return []


def _base(sel: Selection) -> dict[str, Any]:
    """The manifest fields every file shares: ``export`` (or ``diff-export``), store, run (and pair)."""
    shared = sel.describe()
    return {**shared, "kind": "export" if shared["kind"] == "render" else f"{shared['kind']}-export"}


def _block_part(slab: Slab) -> str:
    block = name_part(slab.block, "block")
    return f"{block}-input" if slab.which == "input" else block


def _bin_files(sel: Selection, slab: Slab, x: np.ndarray) -> list[Payload]:
    channels = sel.channels[slab.block] or range(x.shape[0])
    written = []
    for row, c in enumerate(channels):
        name = bin_name(slab.image, _block_part(slab), slab.step, c, slab.guidance)
        entry = {**_base(sel), **slab.params(), "channel": c, "format": "bin", "dtype": "<f4", "shape": list(x.shape[1:])}
        written.append((name, bin_bytes(x[row]), entry))
    return written


def _array_file(sel: Selection, maps: dict[Slab, np.ndarray], fmt: str) -> Payload:
    first = next(iter(maps))
    halves = [g for _, g in sel.guidance]
    sample = maps[first]
    arr = np.empty((len(sel.images), len(halves), *sample.shape), sample.dtype)
    for slab, x in maps.items():
        arr[sel.images.index(slab.image), halves.index(slab.guidance_index)] = x
    name = f"{sel.prefix}{_block_part(first)}-step{first.step:03d}.{fmt}"
    base = _base(sel)
    meta = {
        "block": first.block,
        "which": first.which,
        "step": first.step,
        "call": first.call,
        "timestep": first.timestep,
        "images": ",".join(str(i) for i in sel.images),
        "guidance": ",".join(label for label, _ in sel.guidance),
        "channels": sel.channel_text(first.block),
        "dims": "image,guidance,channel,y,x",
        **{k: v for k, v in base.items() if k != "kind"},
    }
    entry = {"kind": base["kind"], **meta, "images": sel.images, "guidance": [label for label, _ in sel.guidance],
             "format": fmt, "dtype": arr.dtype.str, "shape": list(arr.shape)}
    header = {k: str(v) for k, v in meta.items()}
    return (name, array_file(fmt, {"features": arr}, header), entry)

"""Check a store against the schema: ``dumpunet validate`` and :func:`validate`.

One check per part of the contract: the root's and each run's attributes (parsed through the
typed values, so a malformed one is a problem naming the field), the call tables, the final
images and latents, and every block and attention array (dims, dtype, chunk shape, axes, the
chunks of completed calls and their byte sizes, through :mod:`.chunks`, the checks the reader
makes too). Every read goes through zarr's store API (exists, getsize, list), so a store that is
not a local directory validates the same way; a local one is also walked for links and special
files (:mod:`.localfiles`), which are reported and never read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store as ZarrStore
from zarr.core.sync import sync

from dumpunet.errors import DamagedChunkError, DumpUnetError, StoreError
from dumpunet.specs import parse_ints
from dumpunet.store.chunks import ChunkFiles, call_table_problem, chunk_problem, layout_problem, raw_chunk_bytes, read_chunk
from dumpunet.store.localfiles import SafeLocalStore, UnsafeFileError
from dumpunet.store.location import StoreUrl
from dumpunet.store.schema import (
    ATTENTION_FEATURES,
    BLOCK_ARRAYS,
    CALL_ARRAYS,
    COORD_GUIDANCE,
    COORD_STEP,
    COORD_SUBSTEP,
    COORDS,
    CALL_DONE,
    CALL_STEP,
    IMAGES,
    LATENTS,
    RECORD_DTYPES,
    ArrayAttrs,
    ArrayKind,
    BlockInfo,
    LayerAttrs,
    RootAttrs,
    RunAttrs,
    check_header,
    node as schema_node,
    open_array,
    open_root,
    run_group_path,
)

MAX_CHUNK_REPORTS = 10
"""Damaged chunks named per array; more are counted in one line."""


@dataclass
class Report:
    """What :func:`validate` found: ``problems`` make a store unsound, ``notes`` do not."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Calls:
    """A run's call table as far as it is sound: the step of every call and which are done."""

    step: np.ndarray
    done: np.ndarray  # indices of completely written calls


def validate(where: str | Path | StoreUrl | ZarrStore, *, quick: bool = False) -> Report:
    """Check a store against this schema; raise StoreError if it is not a dumpunet store at all.

    ``where`` is a store directory, a URL (docs/remote.md) or any zarr store (``zarr.storage.MemoryStore``, ...). Checks
    the attributes, every array's dims, dtype and shape against the schema and the block table,
    the call table's consistency, that every chunk of every completed call exists as a regular
    file, and (unless ``quick``) that each uncompressed chunk has exactly its array's chunk size in
    bytes and each compressed chunk (final images, latents) decodes. An interrupted run is sound (a note); a
    missing or damaged chunk of a completed call is not, nor is a link or special file anywhere.

    Examples
    --------
    >>> validate("girl.zarr").ok  # doctest: +SKIP
    True
    """
    root = _open(where)
    files = ChunkFiles(root.store, root.path)
    report = Report()
    if isinstance(root.store, SafeLocalStore):  # links and special files are never read, but always reported
        for key, what in root.store.files.unsafe_entries():
            report.problems.append(str(UnsafeFileError(key, what)))
    try:
        info = RootAttrs.from_json(dict(root.attrs), "root")
    except StoreError as exc:
        return Report([*report.problems, str(exc)])
    blocks = {b.name: b for b in info.blocks}
    if not info.runs:
        report.notes.append("no run recorded yet (stopped before the first U-Net call)")
    for run in info.runs:
        _check_run(root, files, run, blocks, quick, report)
    _check_pairs(info, report)
    report.problems = list(dict.fromkeys(report.problems))  # a link met by the walk and by a read is one problem
    return report


def _check_pairs(info: RootAttrs, report: Report) -> None:
    """Every run a pair names is listed, or else not recorded yet: runs are recorded in the pairs' order."""
    order = list(dict.fromkeys(name for p in info.pairs for name in (p.base, p.layered)))
    for i, name in enumerate(order):
        if name in info.runs:
            continue
        if any(later in info.runs for later in order[i + 1 :]):
            report.problems.append(f"root: attribute 'pairs' names run {name!r}, which attribute 'runs' does not list")
        else:
            report.notes.append(f"run {name} of a pair was not begun (the recording stopped before it)")


def _open(where: str | Path | StoreUrl | ZarrStore) -> zarr.Group:
    if isinstance(where, ZarrStore):
        try:
            root = zarr.open_group(store=where, mode="r", zarr_format=3)
        except (FileNotFoundError, ValueError, TypeError) as exc:
            raise StoreError(f"{where} is not a zarr v3 group: {exc}") from None
        attrs = dict(root.attrs)
        check_header(attrs, str(where))
        return root
    return open_root(where)


def _check_run(root: zarr.Group, files: ChunkFiles, run: str, blocks: dict[str, BlockInfo], quick: bool,
               report: Report) -> None:
    try:
        grp = schema_node(root, run_group_path(run))
        info = RunAttrs.from_json(dict(grp.attrs), f"runs/{run}")
    except KeyError:
        report.problems.append(f"run {run!r} is listed but its group is missing")
        return
    except StoreError as exc:
        report.problems.append(str(exc))
        return
    calls = _check_call_tables(root, files, run, report)
    if calls is None:
        return
    if len(calls.done) < len(calls.step):
        report.notes.append(f"run {run}: {len(calls.step) - len(calls.done)} U-Net call(s) not completely written (interrupted)")
    _check_finals(root, files, run, info, quick, report)
    for name, arr in sorted(_arrays_under(grp, report, run_group_path(run)), key=lambda item: item[0]):
        full = f"{run_group_path(run)}/{name}"
        kind = _kind_of(full)
        if kind is None:
            report.problems.append(f"{full}: not an array of this schema")
            continue
        if kind in CALL_ARRAYS:  # checked above
            continue
        if kind in COORDS.values():
            _check_coordinate(full, arr, kind, info, calls, files, report)
            continue
        if not _check_dims_and_dtype(full, arr, kind, report) or kind.chunk_rule != "slab":
            continue
        if kind in BLOCK_ARRAYS.values():
            _check_block_array(full, arr, kind, blocks, name.split("/")[1], report)
        _check_slab_array(full, arr, kind, info, calls, files, quick, report)


def _check_call_tables(root: zarr.Group, files: ChunkFiles, run: str, report: Report) -> _Calls | None:
    """Check the four call tables' chunks, then read them; None if they cannot be read."""
    tables: dict[str, np.ndarray] = {}
    for kind in CALL_ARRAYS:
        full = kind.path(run=run)
        try:
            arr = open_array(root, kind, run=run)
        except KeyError:
            report.problems.append(f"{full} is missing")
            continue
        except StoreError as exc:
            report.problems.append(str(exc))
            continue
        if not _check_dims_and_dtype(full, arr, kind, report):
            continue
        problem = layout_problem(full, arr, kind) or call_table_problem(files, full, arr, strict=True)
        if problem is not None:
            report.problems.append(problem)
            continue
        tables[kind.key] = arr[...]
    if len(tables) != len(CALL_ARRAYS):
        return None
    lengths = {key: len(t) for key, t in tables.items()}
    n = min(lengths.values())
    if max(lengths.values()) - n > 1:
        report.problems.append(f"run {run}: call tables disagree in length {lengths}")
    done = tables[CALL_DONE.key][:n] == 1
    return _Calls(step=tables[CALL_STEP.key][:n].astype(np.int64), done=np.flatnonzero(done))


def _check_finals(root: zarr.Group, files: ChunkFiles, run: str, info: RunAttrs, quick: bool, report: Report) -> None:
    """A complete run has its final images and latents, one per image, each chunk regular and (unless quick) decodable."""
    if not info.complete:
        reason = f" ({info.interrupted})" if info.interrupted else ""
        report.notes.append(f"run {run}: recording did not finish{reason}")
        return
    for kind, noun in ((IMAGES, "final image"), (LATENTS, "final latents of image")):
        full = kind.path(run=run)
        try:
            arr = open_array(root, kind, run=run)
        except KeyError:
            if kind is IMAGES:
                report.problems.append(f"run {run}: marked complete but has no final images ({full})")
            continue
        except StoreError as exc:
            report.problems.append(str(exc))
            continue
        n = arr.shape[kind.axis("image")]
        problem = layout_problem(full, arr, kind)
        if problem is None and n != info.n_images:
            problem = f"{full}: {n} images, run attributes say {info.n_images}"
        if problem is None and kind is IMAGES and info.height is not None and info.width is not None \
                and tuple(arr.shape[1:3]) != (info.height, info.width):
            problem = f"{full}: {arr.shape[2]}x{arr.shape[1]} pixels, run attributes say {info.width}x{info.height}"
        if problem is not None:
            report.problems.append(problem)
            continue
        for i in range(n):  # compressed: only decoding tells a damaged chunk from a sound one
            what = f"{noun} {i}"
            try:
                problem = chunk_problem(files, full, arr, arr.metadata.encode_chunk_key((i, 0, 0, 0)))
                if problem is None and not quick:
                    read_chunk(files, arr, (i, 0, 0, 0), what)
            except DamagedChunkError as exc:
                report.problems.append(str(exc))
                continue
            if problem is not None:
                report.problems.append(f"{full}: {what}: {problem}")


def _check_dims_and_dtype(full: str, arr: zarr.Array, kind: ArrayKind, report: Report) -> bool:
    """Check an array's dimension names and dtype; False if its axes cannot be trusted."""
    dims = tuple(arr.metadata.dimension_names or ())
    if dims != kind.dims:
        report.problems.append(f"{full}: dimension names {dims}, expected {kind.dims}")
        return False
    if kind.dtype is not None and str(arr.dtype) != kind.dtype:
        report.problems.append(f"{full}: dtype {arr.dtype}, expected {kind.dtype}")
    elif kind.dtype is None and str(arr.dtype) not in RECORD_DTYPES.values():
        report.problems.append(f"{full}: dtype {arr.dtype} is not one of {sorted(RECORD_DTYPES.values())}")
    return True


def _check_block_array(full: str, arr: zarr.Array, kind: ArrayKind, blocks: dict[str, BlockInfo], block: str,
                       report: Report) -> None:
    info = blocks.get(block)
    if info is None:
        report.problems.append(f"{full}: block {block} is not in the block table")
        return
    want = info.output_shape if kind is BLOCK_ARRAYS["output"] else info.input_shape
    got = tuple(arr.shape[kind.axis("guidance") + 1 :])
    if got != tuple(want):
        report.problems.append(f"{full}: shape {got}, block table says {tuple(want)}")


def _check_slab_array(full: str, arr: zarr.Array, kind: ArrayKind, info: RunAttrs, calls: _Calls, files: ChunkFiles,
                      quick: bool, report: Report) -> None:
    """Check the layout, the image/guidance axes, and every chunk of the completed calls the array holds."""
    attrs = _array_attrs(full, arr, kind, report)
    if attrs is None:
        return
    problem = layout_problem(full, arr, kind)
    if problem is not None:
        report.problems.append(problem)
        return
    n_images, n_guidance = arr.shape[kind.axis("image")], arr.shape[kind.axis("guidance")]
    if (n_images, n_guidance) != (info.n_images, len(info.guidance)):
        report.problems.append(f"{full}: image/guidance axes {(n_images, n_guidance)}, expected {(info.n_images, len(info.guidance))}")
        return
    done = calls.done
    if len(done) and arr.shape[kind.axis("call")] <= done[-1]:
        report.problems.append(f"{full}: {arr.shape[kind.axis('call')]} calls, but call {done[-1]} is marked complete")
        return
    if attrs.recorded_steps:
        try:
            steps = set(parse_ints(attrs.recorded_steps, 0, None, noun="step", what=f"{full} recorded_steps"))
        except DumpUnetError as exc:
            report.problems.append(str(exc).splitlines()[0])
            return
        done = np.array([k for k in done if int(calls.step[k]) in steps], dtype=np.int64)
    keys = files.keys(full)
    compressed = raw_chunk_bytes(arr) is None
    missing: dict[int, int] = {}
    damaged: list[str] = []
    for k, i, g in _slabs(done, n_images, n_guidance):
        key = arr.metadata.encode_chunk_key((int(k), i, g) + (0,) * (arr.ndim - 3))
        if key not in keys:
            missing[int(k)] = missing.get(int(k), 0) + 1
            continue
        what = f"call {k} (step {calls.step[k]}), image {i}, {info.guidance[g]}"
        problem = chunk_problem(files, full, arr, key, sizes=not quick)
        if problem is None and not quick and compressed:  # no fixed size: only decoding tells
            try:
                read_chunk(files, arr, (int(k), i, g) + (0,) * (arr.ndim - 3), what)
            except DamagedChunkError as exc:
                damaged.append(str(exc))
        if problem is not None:
            damaged.append(f"{full}: {what}: {problem}")
    for k, n in missing.items():
        report.problems.append(f"{full}: call {k} (step {calls.step[k]}) is complete but {n} of its chunk(s) are missing")
    report.problems.extend(damaged[:MAX_CHUNK_REPORTS])
    if len(damaged) > MAX_CHUNK_REPORTS:
        report.problems.append(f"{full}: {len(damaged) - MAX_CHUNK_REPORTS} more damaged chunk(s)")


def _array_attrs(full: str, arr: zarr.Array, kind: ArrayKind, report: Report) -> ArrayAttrs | LayerAttrs | None:
    try:
        if kind in ATTENTION_FEATURES.values():
            return LayerAttrs.from_json(dict(arr.attrs), full)
        return ArrayAttrs.from_json(dict(arr.attrs), full)
    except StoreError as exc:
        report.problems.append(str(exc))
        return None


def _slabs(done: np.ndarray, n_images: int, n_guidance: int) -> Iterator[tuple[int, int, int]]:
    for k in done:
        for i in range(n_images):
            for g in range(n_guidance):
                yield int(k), i, g


def _check_coordinate(full: str, arr: zarr.Array, kind: ArrayKind, info: RunAttrs, calls: _Calls, files: ChunkFiles,
                      report: Report) -> None:
    """A coordinate array (format 1.1) has its kind's dims and agrees with the run: guidance labels, steps of done calls."""
    if kind is COORD_GUIDANCE:
        problem = layout_problem(full, arr, kind)
        if problem is None:
            try:
                labels = tuple(str(v) for v in arr[...].tolist())
            except Exception as exc:  # noqa: BLE001 - an undecodable chunk is a finding, not a crash
                problem = f"{full}: cannot be read ({type(exc).__name__})"
            else:
                if labels != tuple(info.guidance):
                    problem = f"{full}: labels {list(labels)}, run attributes say {list(info.guidance)}"
        if problem is not None:
            report.problems.append(problem)
        return
    if not _check_dims_and_dtype(full, arr, kind, report):
        return
    problem = layout_problem(full, arr, kind) or call_table_problem(files, full, arr, strict=kind is not COORD_SUBSTEP)
    if problem is None and kind is COORD_STEP:
        values = arr[...]
        done = calls.done[calls.done < len(values)]
        if len(done) < len(calls.done):
            problem = f"{full}: {len(values)} calls, the call table has {int(calls.done.max()) + 1} done"
        else:
            # the writer labels calls in batches: a killed recording leaves its last calls at the fill value 0
            labelled = done[: int(np.flatnonzero(values[done] != 0).max(initial=-1)) + 1]
            bad = np.flatnonzero(values[labelled] != calls.step[labelled])
            if len(bad):
                k = int(labelled[bad[0]])
                problem = f"{full}: call {k} says step {int(values[k])}, the call table says {int(calls.step[k])}"
            elif len(labelled) < len(done):
                report.notes.append(f"{full}: the last {len(done) - len(labelled)} done call(s) not labelled "
                                    "(the recording was killed between two batches)")
    if problem is not None:
        report.problems.append(problem)


def _kind_of(array_path: str) -> ArrayKind | None:
    leaf = array_path.rsplit("/", 1)[-1]
    if "/blocks/" in array_path:
        return BLOCK_ARRAYS.get(leaf) or COORDS.get(leaf)
    if "/attention/" in array_path:
        return ATTENTION_FEATURES.get(leaf) or COORDS.get(leaf)
    for kind in (*CALL_ARRAYS, IMAGES, LATENTS):
        if kind.key == leaf:
            return kind
    return None


def _arrays_under(grp: zarr.Group, report: Report, where: str) -> list[tuple[str, Any]]:
    """Every array below a group, relative to it; unreadable metadata is a problem naming its node, not a traceback."""
    out: list[tuple[str, Any]] = []

    async def listing(prefix: str) -> list[str]:
        return [k async for k in grp.store.list_dir(prefix)]

    stack = [""]
    while stack:
        rel = stack.pop()
        for name in sorted(sync(listing(f"{grp.path}/{rel}".rstrip("/") + "/"))):
            if name == "zarr.json":
                continue
            try:
                member = schema_node(grp, f"{rel}{name}")
            except KeyError:  # a folder without zarr.json, or a stray file: not a node
                continue
            except StoreError as exc:
                report.problems.append(str(exc) if isinstance(exc, UnsafeFileError) else f"{where}/{exc}")
                continue
            if isinstance(member, zarr.Array):
                out.append((f"{rel}{name}", member))
            else:
                stack.append(f"{rel}{name}/")
    return out

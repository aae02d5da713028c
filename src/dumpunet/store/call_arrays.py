"""Per-call arrays written as files: their zarr.json documents and raw chunk files.

The store writer's thread writes a run's per-call arrays through this module instead of zarr's
Array API, whose per-file overhead a recording cannot spare (docs/benchmarks.md). zarr.json
documents come from :func:`dumpunet.store.schema.array_document` and are replaced atomically;
chunk files of uncompressed arrays are their little-endian bytes, written in place (a chunk
interrupted mid-write belongs to a call whose ``call_done`` was never set, so nothing reads it).

With ``direct`` (the store writer's ``direct_io``, off by default), chunk files whose size is a
multiple of 4096 bytes go straight to the disk (``O_DIRECT``, Linux) from page-aligned memory (the
slab itself, or one reused aligned buffer per thread), skipping the copy into fresh page-cache
pages; other sizes, file systems that refuse ``O_DIRECT`` (tmpfs) and other systems write through
the page cache. Whether it pays is measured by ``benchmarks/writer_throughput.py`` (docs/benchmarks.md).

With ``write_back`` (the store writer's ``write_back``), each chunk file written through the page
cache is handed to the disk at once (``posix_fadvise(DONTNEED)``, which on Linux starts the
write-back without waiting for it) instead of when the kernel's dirty-page thresholds or a final
sync get to it: the disk writes while the recording goes on, not after it.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.metadata.v3 import ArrayV3Metadata

from dumpunet.files import write_atomic
from dumpunet.store import schema
from dumpunet.store.schema import ArrayAttrs, LayerAttrs, RunAttrs


class CallArray:
    """One per-call array of a run: its zarr.json document and its chunk files."""

    def __init__(self, base: Path, kind: schema.ArrayKind, shape: Sequence[int], dtype: str | None,
                 attrs: ArrayAttrs | LayerAttrs | None, names: Mapping[str, str], *, raw_chunks: bool) -> None:
        self.kind = kind
        self.path = kind.path(**names)
        self.dir = base / self.path
        attributes = attrs.to_json() if attrs else {}
        if kind.chunk_rule == "slab":  # format 1.1: xarray attaches the group's call coordinates
            attributes = {**attributes, **schema.coordinates_attr()}
        self.doc = schema.array_document(kind, shape, dtype=dtype, attributes=attributes)
        self.meta = ArrayV3Metadata.from_dict(json.loads(json.dumps(self.doc)))
        self.dtype = np.dtype(self.doc["data_type"]).newbyteorder("<")
        codecs = self.doc["codecs"]
        self.raw = raw_chunks and len(codecs) == 1 and codecs[0]["name"] == "bytes"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.doc["shape"])

    def write_document(self) -> None:
        write_atomic(self.dir / "zarr.json", json.dumps(self.doc, indent=2).encode())

    def resize(self, n_calls: int) -> None:
        self.doc["shape"][0] = n_calls
        self.write_document()

    def chunk_file(self, coords: Sequence[int]) -> Path:
        path = self.dir / self.meta.encode_chunk_key(tuple(coords))
        if path.parent != self.dir:  # '/'-separated chunk keys nest folders
            path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_slab(self, k: int, slab: np.ndarray, *, direct: bool = False, write_back: bool = False) -> None:
        """Store call ``k``'s ``[guidance, image, ...]`` slab: one chunk file per (image, guidance)."""
        for job in self.slab_files(k, slab, direct=direct, write_back=write_back):
            job()

    def slab_files(self, k: int, slab: np.ndarray, *, direct: bool = False,
                   write_back: bool = False) -> list[Callable[[], None]]:
        """The writes that store call ``k``'s slab, one per chunk file, in any order or thread."""
        ax = self.kind.axis
        want = (self.shape[ax("guidance")], self.shape[ax("image")], *self.shape[ax("guidance") + 1 :])
        if tuple(slab.shape) != want:
            raise ValueError(f"{self.path}: slab of shape {tuple(slab.shape)}, expected {want} ([guidance, image, ...])")
        x = np.asarray(slab, dtype=self.dtype)
        if not self.raw:  # compressed or sharded (benchmark variants): zarr encodes it
            def encoded() -> None:
                arr = zarr.open_array(self.dir, mode="r+", zarr_format=3)
                arr[k] = np.swapaxes(x, 0, 1)

            return [encoded]
        tail = (0,) * (x.ndim - 2)
        return [
            _chunk_writer(self.chunk_file((k, i, g, *tail)), x[g, i], direct, write_back)
            for g in range(x.shape[0]) for i in range(x.shape[1])
        ]

    def write_table_tail(self, values: list[Any], *, first: int | None = None) -> None:
        """Rewrite the last chunk of a 1-D call table (atomically: it holds earlier calls too).

        ``first=0`` rewrites every chunk from the first on (a coordinate created after some calls).
        """
        size = self.doc["chunk_grid"]["configuration"]["chunk_shape"][0]
        last = (len(values) - 1) // size
        for c in range(last if first is None else first, last + 1):
            chunk = np.full(size, self.kind.fill_value, self.dtype)
            part = values[c * size : (c + 1) * size]
            chunk[: len(part)] = part
            write_atomic(self.chunk_file((c,)), chunk.tobytes())


@dataclass
class GroupCoords:
    """The call coordinates of one group of per-call arrays (a block's, a layer's) and the arrays they label.

    Coordinates are labelled in batches, when the group's arrays grow (every ``grow_calls`` calls)
    and when the run is trimmed (it finishes, or the writer closes): three small files per group
    and call would cost the writer more than the block chunks themselves (docs/benchmarks.md).
    Calls after the last batch keep the fill values (step 0, timestep NaN) until then, which only
    a killed recording leaves behind; the call tables always list every call.
    """

    coords: dict[str, CallArray]
    members: list[CallArray] = field(default_factory=list)
    labelled: int = 0  # calls whose coordinates are written

    def write(self, table: Mapping[str, list[Any]], n_calls: int, *, length: int | None = None) -> None:
        """Label calls up to ``n_calls`` (their chunks from the first unlabelled one) and give the coordinates
        the members' length (or ``length``)."""
        n = length if length is not None else max([a.shape[0] for a in self.members], default=n_calls)
        for kind in schema.CALL_COORDS:
            arr = self.coords[kind.key]
            values = table[schema.table_key(kind)][:n_calls]
            if values and n_calls > self.labelled:
                arr.write_table_tail(values, first=self.labelled // schema.CALL_CHUNK)
            if arr.shape[0] != n:
                arr.resize(n)
        self.labelled = max(self.labelled, n_calls)

    def grown(self) -> bool:
        """Whether the group's arrays grew past its coordinates."""
        return any(a.shape[0] != self.coords["step"].shape[0] for a in self.members)


ALIGN = 4096
"""O_DIRECT needs file offsets, sizes and memory aligned to the device's block size; 4096 covers all."""

_DIRECT = getattr(os, "O_DIRECT", 0)
_no_direct: set[int] = set()  # devices (st_dev) whose file system refused O_DIRECT
_bounce = threading.local()


def _aligned(data: memoryview) -> memoryview:
    """``data`` itself if it is page-aligned, else a copy in this thread's reused aligned buffer."""
    address = np.frombuffer(data, np.uint8).ctypes.data if len(data) else 0
    if address % ALIGN == 0:
        return data
    buf = getattr(_bounce, "buf", None)
    if buf is None or len(buf) < len(data):
        raw = np.empty(len(data) + ALIGN, np.uint8)
        start = -raw.ctypes.data % ALIGN
        buf = _bounce.buf = raw[start : start + len(data)]
    out = buf[: len(data)]
    out[:] = np.frombuffer(data, np.uint8)
    return memoryview(out).cast("B")


_FADVISE = getattr(os, "posix_fadvise", None)  # not on macOS or Windows: no early write-back there


def _chunk_writer(path: Path, data: np.ndarray, direct: bool, write_back: bool) -> Callable[[], None]:
    def write() -> None:
        # in place, not atomic: call_done is set only after every chunk of the call is written
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        if direct and _DIRECT and len(view) % ALIGN == 0 and path.parent.stat().st_dev not in _no_direct:
            try:
                fh = open(path, "wb", buffering=0, opener=_direct_opener)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                _no_direct.add(path.parent.stat().st_dev)  # e.g. tmpfs: the page cache it is
            else:
                with fh:
                    _write_all(fh, _aligned(view))
                return
        with open(path, "wb", buffering=0) as fh:  # unbuffered: one write() of the whole chunk
            _write_all(fh, view)
            if write_back and _FADVISE is not None:
                _FADVISE(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # start the write-back; does not wait

    return write


def _direct_opener(path: str, flags: int) -> int:
    return os.open(path, flags | _DIRECT, 0o666)


def _write_all(fh: Any, view: memoryview) -> None:
    while view:
        view = view[fh.write(view):]


Runner = Callable[[Iterable[Callable[[], None]]], None]
"""Runs a call's chunk writes and returns once all are done (in this thread, or a pool's)."""


def run_here(jobs: Iterable[Callable[[], None]]) -> None:
    for job in jobs:
        job()


@dataclass
class RunFiles:
    info: RunAttrs
    arrays: dict[tuple[str, str], CallArray] = field(default_factory=dict)
    calls: dict[str, CallArray] = field(default_factory=dict)
    groups: dict[str, GroupCoords] = field(default_factory=dict)
    n_calls: int = 0
    done_steps: set[int] = field(default_factory=set)
    table: dict[str, list[Any]] = field(default_factory=lambda: {kind.key: [] for kind in schema.CALL_ARRAYS})


def write_call(st: RunFiles, k: int, values: Mapping[str, Any], data: Mapping[tuple[str, str], np.ndarray],
                grow_calls: int, *, run: Runner = run_here, direct: bool = False, write_back: bool = False) -> None:
    """Write call ``k``: its call-table row (not done), every slab, then ``call_done`` = 1 last.

    ``run`` runs the chunk writes (a thread pool's may run them at once); ``direct`` writes chunk
    files of a suitable size with ``O_DIRECT``, ``write_back`` starts each chunk file's write-back
    at once (module docstring).
    """
    unknown = data.keys() - st.arrays.keys()
    if unknown:
        raise KeyError(f"no array was created for {sorted(unknown)}")
    for kind in schema.CALL_ARRAYS:  # the call is listed, marked not done
        table = st.table[kind.key]
        table.append(0 if kind is schema.CALL_DONE else values[kind.key])
        arr = st.calls[kind.key]
        arr.write_table_tail(table)
        arr.resize(k + 1)
    jobs: list[Callable[[], None]] = []
    for key, arr in st.arrays.items():
        if arr.shape[0] <= k:
            arr.resize(-(-(k + 1) // grow_calls) * grow_calls)
        if key in data:
            jobs += arr.slab_files(k, data[key], direct=direct, write_back=write_back)
    run(jobs)
    for group in st.groups.values():  # labelled in batches, as the arrays grow (GroupCoords)
        if group.grown():
            group.write(st.table, k + 1)
    done = st.table[schema.CALL_DONE.key]
    done[-1] = 1
    st.calls[schema.CALL_DONE.key].write_table_tail(done)


def trim(st: RunFiles) -> None:
    """Cut the per-call arrays of a run back to the calls written (they grow ahead: StoreWriter's grow_calls)."""
    for arr in st.arrays.values():
        if arr.shape[0] != st.n_calls:
            arr.resize(st.n_calls)
    for group in st.groups.values():
        group.write(st.table, st.n_calls, length=st.n_calls)

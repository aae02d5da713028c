"""Write a store from a bounded background thread, so I/O overlaps the U-Net.

The recorder hands over one U-Net call at a time (:meth:`StoreWriter.submit_call`). The writer
thread appends the call to the call table with ``call_done`` = 0, writes every slab of the call as
one chunk file, and only then sets ``call_done`` = 1. A run killed at any moment therefore leaves
a store whose complete calls are readable and whose incomplete call is marked as such.

Per-call arrays are written by this thread directly, without zarr's machinery
(:mod:`dumpunet.store.call_arrays`). Per-call arrays grow ahead of the call table
(see ``grow_calls``) and are cut back to it when a run finishes or the writer closes; readers
take the call count from the call table. The coordinate arrays beside them (format 1.1) grow
with them and are labelled in batches (:class:`~dumpunet.store.call_arrays.GroupCoords`).
Groups' attributes, final images and latents go through zarr.

This module needs numpy and zarr only (no torch): the writer benchmark drives it without a model.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dumpunet._version import __version__
from dumpunet.errors import RecordError
from dumpunet.files import write_atomic
from dumpunet.specs import format_ints
from dumpunet.store import schema
from dumpunet.store.call_arrays import CallArray, GroupCoords, RunFiles, run_here, trim, write_call
from dumpunet.store.schema import ArrayAttrs, BlockInfo, LayerAttrs, PairInfo, RootAttrs, RunAttrs, check_name
from dumpunet.store.target import StoreLock, check_target, create_store

SlabSource = np.ndarray | Callable[[], np.ndarray]
"""A slab ``[guidance, image, ...]`` (the U-Net batch order) or a callable that returns one.

A callable lets the recorder hand over a device tensor whose copy to the host is still under way:
the writer thread calls it when it gets to the slab.
"""

GROW_CALLS = 32
"""Per-call arrays grow by this many calls at a time and are trimmed to the call count at the end.

Growing by one call rewrites every array's zarr.json on every call: with 25 block arrays that is
one small file per two chunk files, a third of the writer's time (docs/benchmarks.md). The call
tables still grow by exactly one call, so their length stays the number of calls.
"""

WRITER_NICENESS = 10
"""Nice value of the writer threads (Linux): recording should slow the U-Net as little as it can."""

WRITE_THREADS = 1
"""Threads that write one call's chunk files (1: the writer thread alone). See docs/benchmarks.md."""

DIRECT_IO = False
"""Write page-multiple chunk files with O_DIRECT (:mod:`dumpunet.store.call_arrays`). Off by default:
on the development VM it measured 2x the page cache's speed in a plain file test and 0.6x in the
writer benchmark, both under heavy load (docs/benchmarks.md); to decide on a quiet machine."""

WRITE_BACK = True
"""Start each chunk file's write-back as soon as it is written (:mod:`dumpunet.store.call_arrays`).

Without it the kernel holds a recording's pages until its dirty thresholds (10 % of memory) or a
final sync, so the disk idles during the recording and writes everything after it. On the
development VM under heavy load it shortened the GPU-rate simulation's recordings (5 of 6 pairs)
and slowed the writer benchmark's saturated writer once (docs/benchmarks.md, issue 14)."""


def _nice() -> None:
    # Yield the CPU to the U-Net's threads: the queue absorbs what the writer cannot do at once.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


class StoreWriter:
    """Create a dumpunet store at ``path`` and write it in the background.

    Every method only queues work, in order; errors of the writer thread surface as
    :class:`RecordError` from the next call and from :meth:`close`. The root's and each run's
    attributes are held as typed values (:class:`RootAttrs`, :class:`RunAttrs`) and rewritten
    whole from them.

    ``raw_chunks``, ``grow_calls``, ``write_threads``, ``direct_io`` and ``write_back`` choose how per-call
    arrays are written (the benchmarks compare variants): ``raw_chunks=False`` writes chunks
    through zarr's Array API; ``write_threads`` > 1 writes a call's chunk files from that many
    threads; ``direct_io=True`` writes chunk files of a page multiple with ``O_DIRECT``;
    ``write_back=False`` leaves chunk files to the kernel's own write-back timing;
    ``coordinates=False`` leaves out the coordinate arrays (format 1.0's layout).

    ``keep_runs`` (``record --prompts`` resuming) opens the existing store at ``path`` instead of
    creating one: the runs it names stay, every other run is removed (an interrupted one, to be
    recorded again), and new runs are added after them. The root's other attributes stay as they
    were, except ``prompt_list`` and ``pairs`` where given: a list that grew by appended prompts
    names itself and its new pairs.

    Memory stays bounded: :meth:`submit_call` blocks while more than ``max_queue_bytes`` wait
    (back-pressure), and :attr:`waited_seconds` adds up how long callers were blocked so.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from dumpunet.store.schema import BlockInfo, RunAttrs
    >>> d = tempfile.mkdtemp()
    >>> w = StoreWriter(os.path.join(d, "s.zarr"), model={"name": "demo"}, versions={})
    >>> b = BlockInfo("IN00", "conv_in", ("conv_in",), "conv_in", (4, 8, 8), (4, 8, 8), False)
    >>> w.set_block_table([b])
    >>> w.begin_run("main", RunAttrs(prompt="demo", guidance=("uncond", "cond")), [b], which=("output",), dtype="float16")
    >>> w.submit_call("main", step=1, substep=0, timestep=999.0,
    ...               slabs={("IN00", "output"): np.zeros((2, 1, 4, 8, 8), np.float16)})
    >>> w.close()
    """

    def __init__(
        self,
        path: str | Path,
        *,
        model: Mapping[str, Any],
        versions: Mapping[str, Any],
        pairs: Sequence[PairInfo] = (),
        prompt_list: schema.PromptListInfo | None = None,
        overwrite: bool = False,
        keep_runs: Sequence[str] | None = None,
        max_queue_bytes: int = 1 << 30,
        raw_chunks: bool = True,
        grow_calls: int = GROW_CALLS,
        coordinates: bool = True,
        write_threads: int = WRITE_THREADS,
        direct_io: bool = DIRECT_IO,
        write_back: bool = WRITE_BACK,
    ) -> None:
        if grow_calls < 1:
            raise ValueError(f"grow_calls must be at least 1, got {grow_calls}")
        if write_threads < 1:
            raise ValueError(f"write_threads must be at least 1, got {write_threads}")
        self.path = Path(path)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.info = RootAttrs(
            header=schema.header(writer=f"dumpunet {__version__}", created=created),
            model=dict(model),
            versions=dict(versions),
            pairs=tuple(pairs),
            prompt_list=prompt_list,
        )
        if keep_runs is None:
            check_target(self.path, overwrite=overwrite)  # before the lock file is made beside it
        self._lock = StoreLock(self.path).acquire()  # held until close(); the kernel drops it if we die
        try:
            if keep_runs is None:
                create_store(self.path, self.info.to_json(), overwrite=overwrite)
            self.root = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
            if keep_runs is not None:
                self._keep_only(tuple(keep_runs), pairs=tuple(pairs), prompt_list=prompt_list)
        except BaseException:
            self._lock.release()
            raise
        self.raw_chunks = raw_chunks
        self.grow_calls = grow_calls
        self.coordinates = coordinates
        self.direct_io = direct_io
        self.write_back = write_back
        self._pool = ThreadPoolExecutor(write_threads, "dumpunet-chunks", initializer=_nice) if write_threads > 1 else None
        self._runs: dict[str, RunFiles] = {}
        self._error: BaseException | None = None
        self.max_queue_bytes = max_queue_bytes  # the queue's bound (the recorder sizes its host-buffer pool to it)
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue[tuple[Callable[[], None], int] | None] = queue.SimpleQueue()
        self._closed = False
        self.busy_seconds = 0.0  # time the writer thread spent writing (for benchmarks)
        self.waited_seconds = 0.0  # time callers were blocked because the queue was full
        self.peak_queue_bytes = 0  # the most bytes that waited at once
        self._thread = threading.Thread(target=self._loop, name="dumpunet-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public, queued

    def set_block_table(self, blocks: Sequence[BlockInfo]) -> None:
        """Write the model's block table (every block, recorded or not) into the root attributes."""
        blocks = tuple(blocks)
        self._put(lambda: self._write_root(blocks=blocks))

    def set_pairs(self, pairs: Sequence[PairInfo]) -> None:
        """Write the pairs of runs (``record --pair``, ``sweep``) into the root attributes."""
        pairs = tuple(pairs)
        self._put(lambda: self._write_root(pairs=pairs))

    def begin_run(
        self,
        run: str,
        attrs: RunAttrs,
        blocks: Sequence[BlockInfo],
        *,
        which: Iterable[str],
        dtype: str,
    ) -> None:
        """Create the group, call table and empty block arrays of one run.

        The image and guidance axes come from ``attrs.n_images`` and ``attrs.guidance``.
        """
        check_name(run, "run")
        info = replace(attrs, complete=False)
        which = tuple(which)
        blocks = list(blocks)

        def task() -> None:
            st = RunFiles(info)
            self._runs[run] = st
            grp = self.root.create_group(schema.run_group_path(run))
            grp.attrs.put(info.to_json())
            self._write_root(runs=(*self.info.runs, run))
            for kind in schema.CALL_ARRAYS:
                st.calls[kind.key] = self._create(kind, (0,), None, None, {"run": run})
            for b in blocks:
                for w in which:
                    kind = schema.BLOCK_ARRAYS[w]
                    chw = b.output_shape if w == "output" else b.input_shape
                    shape = (0, info.n_images, len(info.guidance), *chw)
                    st.arrays[(b.name, w)] = self._create(kind, shape, dtype, None, {"run": run, "block": b.name})
            self._add_coords(st, [st.arrays[(b.name, w)] for b in blocks for w in which])

        self._put(task)

    def add_arrays(
        self,
        run: str,
        arrays: Mapping[tuple[str, str], tuple[schema.ArrayKind, Sequence[int], str, Mapping[str, str], ArrayAttrs | LayerAttrs | None]],
    ) -> None:
        """Create extra per-call arrays of a run.

        ``arrays`` maps a slab key to (kind, shape without the call axis, dtype, path names,
        attributes), e.g. ``("IN01.attn2", "qk") -> (ATTENTION_FEATURES["qk"], (1, 2, 8, 4096, 77),
        "float16", {"layer": "IN01.attn2"}, LayerAttrs(layer_hw=(64, 64), ...))``.
        """
        arrays = dict(arrays)

        def task() -> None:
            st = self._runs[run]
            for key, (kind, shape, dtype, names, attrs) in arrays.items():
                st.arrays[key] = self._create(kind, (st.n_calls, *shape), dtype, attrs, {"run": run, **names})
            self._add_coords(st, [st.arrays[key] for key in arrays])

        self._put(task)

    def submit_call(
        self,
        run: str,
        *,
        step: int,
        substep: int,
        timestep: float | Callable[[], float],
        slabs: Mapping[tuple[str, str], SlabSource],
        nbytes: int | None = None,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        """Queue one U-Net call: every slab, then its completion mark.

        ``on_written`` runs in the writer thread once the call is written (or failed): the
        recorder hands its slab buffers back to reuse them.

        ``timestep`` may be a callable, called in the writer thread (a GPU tensor's copy under way).
        ``slabs`` maps (block or layer, array key) to a ``[guidance, image, ...]`` array. Blocks
        without a slab in this call keep zeros and the call is still complete (the recorder
        decides what a call holds). Blocks when the queue holds more than ``max_queue_bytes``.
        """
        slabs = dict(slabs)
        size = nbytes if nbytes is not None else sum(s.nbytes for s in slabs.values() if isinstance(s, np.ndarray))

        def task() -> None:
            st = self._runs[run]
            k = st.n_calls
            try:
                data = {key: src() if callable(src) else src for key, src in slabs.items()}
                values = {"call_step": step, "call_substep": substep,
                          "call_timestep": timestep() if callable(timestep) else timestep}
                write_call(st, k, values, data, self.grow_calls, run=self._run_jobs, direct=self.direct_io,
                           write_back=self.write_back)
            finally:
                if on_written is not None:
                    on_written()
            st.n_calls = k + 1
            st.done_steps.add(step)

        self._put(task, size)

    def finish_run(self, run: str, *, images: np.ndarray | None = None, latents: np.ndarray | None = None,
                   writer_wait_seconds: float | None = None) -> None:
        """Write the final images (uint8 [image, y, x, 3]) and latents, then mark the run complete.

        ``writer_wait_seconds`` (how long the recording waited on this writer) goes into the
        run's attributes.
        """

        def task() -> None:
            trim(self._runs[run])
            if images is not None:
                arr = schema.create_array(self.root, schema.IMAGES, images.shape, run=run)
                arr[...] = images
            if latents is not None:
                arr = schema.create_array(self.root, schema.LATENTS, latents.shape, run=run)
                arr[...] = latents.astype(np.float32, copy=False)
            self._write_run(run, complete=True, writer_wait_seconds=writer_wait_seconds)

        self._put(task)

    def mark_interrupted(self, run: str, reason: str) -> None:
        """Record why a run stopped early (its complete calls stay readable)."""
        self._put(lambda: self._write_run(run, interrupted=reason))

    def completed_steps(self, run: str) -> list[int]:
        """Steps with at least one completely written call so far (read after :meth:`flush`)."""
        st = self._runs.get(run)
        return sorted(st.done_steps) if st else []

    def flush(self) -> None:
        """Wait until everything queued so far is written; raise the writer's error if any."""
        done = threading.Event()
        self._put(done.set)
        while not done.wait(0.1):
            if self._error is not None or not self._thread.is_alive():
                break
        self._raise_if_failed()

    def close(self) -> None:
        """Drain the queue, stop the thread and raise the writer's error if any."""
        if self._closed:
            return
        self._closed = True
        # not through _put: after an error the loop skips the trim, and the error surfaces below
        self._queue.put((self._trim_all, 0))
        self._queue.put(None)
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown()
        self._lock.release()
        self._raise_if_failed()

    # ------------------------------------------------------------------ internals

    def _keep_only(self, keep: tuple[str, ...], *, pairs: tuple[PairInfo, ...],
                   prompt_list: schema.PromptListInfo | None) -> None:
        """Take the existing root's attributes with only the runs ``keep`` listed (and ``pairs`` and
        ``prompt_list`` where given); remove every other run's folder.

        The root is rewritten first: a kill between the two leaves folders no run lists, which
        readers never open and the next resume removes. Files (the group's ``zarr.json``) and
        links stay.
        """
        import shutil

        old = RootAttrs.from_json(dict(self.root.attrs), str(self.path))
        missing = [run for run in keep if run not in old.runs]
        if missing:
            raise RecordError(f"{self.path}: cannot keep run {missing[0]!r}, which the store does not list")
        self.info = replace(old, runs=keep, pairs=pairs or old.pairs, prompt_list=prompt_list or old.prompt_list)
        self.root.attrs.put(self.info.to_json())
        runs_dir = self.path / schema.RUNS_GROUP
        if runs_dir.is_dir():
            for folder in runs_dir.iterdir():
                if folder.name not in keep and folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder)

    def _write_root(self, **changes: Any) -> None:
        """Replace fields of the root attributes and rewrite them (writer thread only)."""
        self.info = replace(self.info, **changes)
        self.root.attrs.put(self.info.to_json())

    def _write_run(self, run: str, **changes: Any) -> None:
        """Replace fields of a run's attributes and rewrite them (writer thread only)."""
        st = self._runs[run]
        st.info = replace(st.info, **changes)
        self.root[schema.run_group_path(run)].attrs.put(st.info.to_json())

    def _create(self, kind: schema.ArrayKind, shape: Sequence[int], dtype: str | None,
                attrs: ArrayAttrs | LayerAttrs | None, names: Mapping[str, str]) -> CallArray:
        """Create an empty per-call array (and any missing parent group) by writing its documents."""
        arr = CallArray(self.path, kind, shape, dtype, attrs, names, raw_chunks=self.raw_chunks)
        parent = arr.dir.parent
        missing = []
        while parent != self.path and not (parent / "zarr.json").exists():
            missing.append(parent)
            parent = parent.parent
        for group in reversed(missing):
            group.mkdir(exist_ok=True)
            write_atomic(group / "zarr.json", json.dumps(schema.GROUP_DOCUMENT).encode())
        arr.dir.mkdir(parents=True, exist_ok=True)
        arr.write_document()
        return arr

    def _add_coords(self, st: RunFiles, members: Sequence[CallArray]) -> None:
        """Create the coordinate arrays beside new per-call arrays (format 1.1), filled for the calls so far."""
        if not self.coordinates:
            return
        for arr in members:
            name = schema.data_group(arr.path)
            group = st.groups.get(name)
            if group is None:
                labels = schema.create_array(self.root, schema.COORD_GUIDANCE, (len(st.info.guidance),), group=name)
                labels[...] = np.array(st.info.guidance, dtype=str)
                coords = {kind.key: self._create(kind, (st.n_calls,), None, None, {"group": name})
                          for kind in schema.CALL_COORDS}
                group = st.groups[name] = GroupCoords(coords)
                if st.n_calls:  # a group added during the run: label the calls before it too
                    group.write(st.table, st.n_calls)
            group.members.append(arr)

    def _put(self, task: Callable[[], None], size: int = 0) -> None:
        self._raise_if_failed()
        if self._closed:
            raise RuntimeError("the store writer is closed")
        with self._cond:
            if self._pending_bytes > 0 and self._pending_bytes + size > self.max_queue_bytes:
                start = time.perf_counter()
                while self._pending_bytes > 0 and self._pending_bytes + size > self.max_queue_bytes and self._error is None:
                    self._cond.wait(0.1)
                self.waited_seconds += time.perf_counter() - start
            self._pending_bytes += size
            self.peak_queue_bytes = max(self.peak_queue_bytes, self._pending_bytes)
        self._raise_if_failed()
        self._queue.put((task, size))

    @property
    def queue_bytes(self) -> int:
        """Bytes queued and not yet written."""
        return self._pending_bytes

    def _run_jobs(self, jobs: list[Callable[[], None]]) -> None:
        if self._pool is None or len(jobs) < 2:
            run_here(jobs)
            return
        futures = [self._pool.submit(job) for job in jobs]
        wait(futures)  # every write ends before call_done is set or the buffers go back
        for future in futures:
            future.result()

    def _loop(self) -> None:
        _nice()
        while True:
            item = self._queue.get()
            if item is None:
                return
            task, size = item
            start = time.perf_counter()
            try:
                if self._error is None:
                    task()
            except BaseException as exc:  # surfaced to the producer thread
                self._error = exc
            finally:
                self.busy_seconds += time.perf_counter() - start
                with self._cond:
                    self._pending_bytes -= size
                    self._cond.notify_all()

    def _trim_all(self) -> None:
        for st in self._runs.values():
            trim(st)

    def _raise_if_failed(self) -> None:
        exc = self._error
        if exc is None:
            return
        done = {run: self.completed_steps(run) for run in self._runs}
        kept = "; ".join(f"{run}: steps {format_ints(s) or 'none'}" for run, s in done.items()) or "none"
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise RecordError(
                f"disk full while writing {self.path}; complete steps stay readable ({kept}). "
                "Free some space, or record fewer blocks/steps (see --dry-run)"
            ) from exc
        if isinstance(exc, OSError):
            raise RecordError(f"cannot write {self.path}: {exc.strerror or exc}; complete steps stay readable ({kept})") from exc
        raise RecordError(f"writing {self.path} failed: {exc!r}; complete steps stay readable ({kept})") from exc


"""Write a store from a bounded background thread, so compression and I/O overlap the U-Net.

The recorder hands over one U-Net call at a time (:meth:`StoreWriter.submit_call`); the writer
thread grows the arrays by one call, writes every slab of the call concurrently through zarr's
async API, and only then sets ``call_done`` for it. A run killed at any moment therefore leaves
a store whose complete calls are readable and whose incomplete call is marked as such. zarr's
local store replaces files atomically, so no chunk or metadata file is ever half-written.

This module needs numpy and zarr only (no torch): the writer benchmark drives it without a model.
"""

from __future__ import annotations

import asyncio
import errno
import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from dumpunet import __version__
from dumpunet import store_schema as schema
from dumpunet.errors import RecordError, StoreError
from dumpunet.specs import format_ints

SlabSource = np.ndarray | Callable[[], np.ndarray]
"""A slab ``[guidance, image, ...]`` (the U-Net batch order) or a callable that returns one.

A callable lets the recorder hand over a device tensor whose copy to the host is still under way:
the writer thread calls it when it gets to the slab.
"""


@dataclass
class _RunState:
    arrays: dict[tuple[str, str], zarr.Array] = field(default_factory=dict)
    calls: dict[str, zarr.Array] = field(default_factory=dict)
    n_calls: int = 0
    done_steps: set[int] = field(default_factory=set)


class StoreWriter:
    """Create a dumpunet store at ``path`` and write it in the background.

    Every method only queues work, in order; errors of the writer thread surface as
    :class:`RecordError` from the next call and from :meth:`close`.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from dumpunet.store_schema import BlockInfo
    >>> d = tempfile.mkdtemp()
    >>> w = StoreWriter(os.path.join(d, "s.zarr"), root_attrs={"model": {"name": "demo"}})
    >>> b = BlockInfo("IN00", "conv_in", ("conv_in",), "conv_in", (4, 8, 8), (4, 8, 8), False)
    >>> w.begin_run("main", {"prompt": "demo"}, [b], which=("output",), n_images=1, n_guidance=2, dtype="float16")
    >>> w.submit_call("main", step=1, substep=0, timestep=999.0,
    ...               slabs={("IN00", "output"): np.zeros((2, 1, 4, 8, 8), np.float16)})
    >>> w.close()
    """

    def __init__(
        self,
        path: str | Path,
        *,
        root_attrs: Mapping[str, Any],
        overwrite: bool = False,
        max_queue_bytes: int = 1 << 30,
    ) -> None:
        self.path = Path(path)
        _prepare_target(self.path, overwrite=overwrite)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.root = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        self.root.attrs.update(
            {schema.HEADER_KEY: schema.header(writer=f"dumpunet {__version__}", created=created), **root_attrs}
        )
        self._runs: dict[str, _RunState] = {}
        self._error: BaseException | None = None
        self._max_bytes = max_queue_bytes
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._queue: queue.SimpleQueue[tuple[Callable[[], None], int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="dumpunet-writer", daemon=True)
        self._thread.start()
        self._closed = False

    # ------------------------------------------------------------------ public, queued

    def update_root_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` into the root group's attributes (in queue order)."""
        attrs = dict(attrs)
        self._put(lambda: self.root.attrs.update(attrs))

    def begin_run(
        self,
        run: str,
        attrs: Mapping[str, Any],
        blocks: Sequence[schema.BlockInfo],
        *,
        which: Iterable[str],
        n_images: int,
        n_guidance: int,
        dtype: str,
    ) -> None:
        """Create the group, call table and empty block arrays of one run."""
        attrs = dict(attrs)
        which = tuple(which)
        blocks = list(blocks)

        def task() -> None:
            st = _RunState()
            self._runs[run] = st
            grp = self.root.create_group(schema.run_group_path(run))
            grp.attrs.update({**attrs, "complete": False})
            self.root.attrs["runs"] = [*self.root.attrs.get("runs", []), run]
            for kind in schema.CALL_ARRAYS:
                st.calls[kind.key] = schema.create_array(self.root, kind, (0,), run=run)
            for b in blocks:
                for w in which:
                    kind = schema.BLOCK_ARRAYS[w]
                    chw = b.output_shape if w == "output" else b.input_shape
                    shape = (0, n_images, n_guidance, *chw)
                    st.arrays[(b.name, w)] = schema.create_array(self.root, kind, shape, dtype=dtype, run=run, block=b.name)

        self._put(task)

    def add_arrays(self, run: str, arrays: Mapping[tuple[str, str], tuple[Any, ...]]) -> None:
        """Create extra per-call arrays of a run.

        ``arrays`` maps a slab key to (kind, shape without the call axis, dtype, path names,
        attributes), e.g. ``("IN01.attn2", "qk") -> (ATTENTION_FEATURES["qk"], (1, 2, 8, 4096, 77),
        "float16", {"layer": "IN01.attn2"}, {...})``.
        """
        arrays = dict(arrays)

        def task() -> None:
            st = self._runs[run]
            for key, (kind, shape, dtype, names, attrs) in arrays.items():
                st.arrays[key] = schema.create_array(
                    self.root, kind, (st.n_calls, *shape), dtype=dtype, attributes=attrs, run=run, **names
                )

        self._put(task)

    def submit_call(
        self,
        run: str,
        *,
        step: int,
        substep: int,
        timestep: float,
        slabs: Mapping[tuple[str, str], SlabSource],
        nbytes: int | None = None,
    ) -> None:
        """Queue one U-Net call: every slab, then its completion mark.

        ``slabs`` maps (block or layer, array key) to a ``[guidance, image, ...]`` array. Blocks
        without a slab in this call keep zeros and the call is still complete (the recorder
        decides what a call holds). Blocks when the queue holds more than ``max_queue_bytes``.
        """
        slabs = dict(slabs)
        size = nbytes if nbytes is not None else sum(s.nbytes for s in slabs.values() if isinstance(s, np.ndarray))

        def task() -> None:
            st = self._runs[run]
            k = st.n_calls
            data = {key: src() if callable(src) else src for key, src in slabs.items()}
            sync(_write_call(st, k, step, substep, timestep, data))
            st.n_calls = k + 1
            st.done_steps.add(step)

        self._put(task, size)

    def finish_run(
        self,
        run: str,
        *,
        images: np.ndarray | None = None,
        latents: np.ndarray | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the final images (uint8 [image, y, x, 3]) and latents, then mark the run complete."""
        attrs = dict(attrs or {})

        def task() -> None:
            if images is not None:
                arr = schema.create_array(self.root, schema.IMAGES, images.shape, run=run)
                arr[...] = images
            if latents is not None:
                arr = schema.create_array(self.root, schema.LATENTS, latents.shape, run=run)
                arr[...] = latents.astype(np.float32, copy=False)
            grp = self.root[schema.run_group_path(run)]
            grp.attrs.update({**attrs, "complete": True})

        self._put(task)

    def mark_interrupted(self, run: str, reason: str) -> None:
        """Record why a run stopped early (its complete calls stay readable)."""
        self._put(lambda: self.root[schema.run_group_path(run)].attrs.update({"interrupted": reason}))

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
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    # ------------------------------------------------------------------ internals

    def _put(self, task: Callable[[], None], size: int = 0) -> None:
        self._raise_if_failed()
        if self._closed:
            raise RuntimeError("the store writer is closed")
        with self._cond:
            while self._pending_bytes > 0 and self._pending_bytes + size > self._max_bytes and self._error is None:
                self._cond.wait(0.1)
            self._pending_bytes += size
        self._raise_if_failed()
        self._queue.put((task, size))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            task, size = item
            try:
                if self._error is None:
                    task()
            except BaseException as exc:  # surfaced to the producer thread
                self._error = exc
            finally:
                with self._cond:
                    self._pending_bytes -= size
                    self._cond.notify_all()

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


import os as _os
_EXACT = _os.environ.get("DU_EXACT", "1") == "1"
_TWO_PHASE = True


async def _write_call(st: _RunState, k: int, step: int, substep: int, timestep: float, data: Mapping[tuple[str, str], np.ndarray]) -> None:
    grow = [arr.async_array.resize((k + 1,)) for arr in st.calls.values()]
    for arr in st.arrays.values():
        if arr.shape[0] <= k:
            n = k + 1 if _EXACT else max(2 * arr.shape[0], 8)
            grow.append(arr.async_array.resize((n, *arr.shape[1:])))
    await asyncio.gather(*grow)
    jobs = [
        st.calls["call_step"].async_array.setitem(k, step),
        st.calls["call_substep"].async_array.setitem(k, substep),
        st.calls["call_timestep"].async_array.setitem(k, timestep),
    ]
    for key, x in data.items():
        a = st.arrays[key].async_array
        for g in range(x.shape[0]):
            for i in range(x.shape[1]):
                # exact chunk-shaped selection: zarr encodes the slab in place, without a merge copy
                sel = (slice(k, k + 1), slice(i, i + 1), slice(g, g + 1))
                jobs.append(a.setitem(sel, x[g : g + 1, i : i + 1].reshape(1, 1, 1, *x.shape[2:])))
    await asyncio.gather(*jobs)
    await st.calls["call_done"].async_array.setitem(k, 1)


def _prepare_target(path: Path, *, overwrite: bool) -> None:
    """Refuse to clobber anything but an existing dumpunet store, and that only with ``overwrite``."""
    if not path.exists():
        if not path.parent.exists():
            raise RecordError(f"cannot create {path}: folder {path.parent} does not exist")
        return
    if not overwrite:
        raise RecordError(f"{path} already exists; choose another --out or pass --overwrite")
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        return
    try:
        schema.open_root(path)
    except StoreError:
        raise RecordError(f"{path} exists and is not a dumpunet store; --overwrite only replaces dumpunet stores") from None
    shutil.rmtree(path)

"""Run the per-file work of render, export and diff on dask workers (``--dask``).

The plan is made on the client as for the local thread pool (:mod:`.pool`): the selection is
checked, files are named, PCA bases fitted and Auto first passes run there. Then each file's work
goes to a worker as a small task: the store's path (or URL with its storage options) and the pick (a :class:`Source`), the slab
and the file's parameters, never arrays. The worker opens the store by path itself (once per
process, :func:`open_source`), reads the chunk, draws and encodes, and sends back the file's bytes
and manifest entry; the client writes them through the command's
:class:`~dumpunet.analyzer.output.OutputFolder`, as the local path does.

Why the client writes, not the workers: one :class:`~dumpunet.analyzer.output.OutputFolder` keeps
the one lifecycle of an output folder (atomic writes, the manifest in batches, what a failure
or Ctrl-C leaves), with no second writer to coordinate across processes or machines; the workers
of a remote cluster need not see ``--out`` at all (only the stores, at the same paths); and
both paths run the very same drawing and encoding functions, so their files are identical byte
for byte. The cost is moving each encoded PNG once over the wire, small beside the reads and
the encoding.

A damaged chunk meets the command's :class:`~dumpunet.analyzer.damage.Damage` on the client:
the worker returns the error as a value, and the client raises it or (``skip_damaged``) notes
it, so the warnings and the count are the local path's.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.damage import Damage
from dumpunet.analyzer.selection import Selection, Slab, select, select_pair, select_stores
from dumpunet.errors import DamagedChunkError
from dumpunet.store import Store
from dumpunet.store.location import Location, StoreUrl

__all__ = ["Source", "note_damage", "open_source", "run_on_dask", "worker_call"]

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """How a worker opens a selection by itself: a store's path, the pick, and for a diff the pair or the other store."""

    path: Location
    pick: Pick
    pair: str | None = None
    diff: bool = False
    stamp: int | None = None
    """The root document's modification time when the client planned: a store recorded again at the
    same path is a new source, so a long-lived worker does not draw from the one it opened before."""
    against: tuple[Location, str | None] | None = None
    """A diff of two stores: the other store's path or URL, and its run (``None``: the matching run)."""

    @classmethod
    def of(cls, store: Store, pick: Pick, *, pair: str | None = None, diff: bool = False,
           against: tuple[Store, str | None] | None = None) -> Source:
        """The source of a selection of ``store``: its absolute path (workers may start elsewhere), or its URL.

        A URL travels with its storage options (:class:`~dumpunet.store.location.StoreUrl`), so the
        workers reach the store as the client did; credentials not given as options come from the
        workers' environment. ``against``: the store (and run) a diff subtracts.
        """
        path, stamp = _where(store)
        other = None if against is None else (_where(against[0])[0], against[1])
        return cls(path, pick, pair, diff or against is not None, stamp, other)


def _where(store: Store) -> tuple[Location, int | None]:
    """A store's location as a worker reaches it, and its root document's modification time (local stores)."""
    if isinstance(store.path, StoreUrl):
        return store.path, None
    path = store.path.resolve()
    try:
        return path, os.stat(path / "zarr.json").st_mtime_ns
    except OSError:
        return path, None


@functools.lru_cache(maxsize=64)
def open_source(source: Source) -> Selection:
    """The selection of ``source``, opened once per worker process (tasks of one store share it)."""
    from dumpunet.store import open_store

    store = open_store(source.path)
    if source.against is not None:
        other, run = source.against
        return select_stores(store, source.pick, open_store(other), base_run=run)
    return select_pair(store, source.pick, pair=source.pair) if source.diff else select(store, source.pick)


_LOCK: list[Any] = []
_LOCK_MUTEX = threading.Lock()


def worker_lock() -> Any:
    """This process's :func:`~dumpunet.analyzer.pool.kernel_lock`, shared by its worker threads."""
    from dumpunet.analyzer.pool import kernel_lock

    with _LOCK_MUTEX:
        if not _LOCK:
            _LOCK.append(kernel_lock())
    return _LOCK[0]


def worker_call(work: Callable[..., R], source: Source, *args: Any) -> R | DamagedChunkError:
    """On a worker: ``work(selection, *args)`` with numba on one thread; a damaged chunk comes back as a value."""
    import numba

    numba.set_num_threads(1)  # the cluster already fills the cores, as the pool's threads do
    try:
        return work(open_source(source), *args)
    except DamagedChunkError as exc:
        return exc


def note_damage(damage: Damage, slab: Slab, exc: DamagedChunkError) -> None:
    """A worker's damaged chunk, on the client: raise it, or (skipping) warn and count it once."""

    def again() -> None:
        raise exc

    damage.attempt(slab, again)


def run_on_dask(
    client: Any,
    items: Iterable[T],
    call: Callable[[T], tuple[Any, ...]],
    finish: Callable[[T, Any], R],
    *,
    done: list[R],
    on_done: Callable[[R], None] | None = None,
) -> None:
    """Run ``call(item)`` = ``(work, source, *args)`` of every item as a :func:`worker_call` task;
    ``finish(item, result)`` on the client as each comes back (it feeds ``on_done``: a progress bar).

    ``done`` gets the finished results in the order of ``items``. On an error or Ctrl-C, tasks not
    yet finished are cancelled and ``done`` holds exactly the results finished so far, as
    :func:`~dumpunet.analyzer.pool.run_parallel` leaves it.
    """
    from distributed import as_completed

    items = list(items)
    futures = [client.submit(worker_call, *call(item), pure=False) for item in items]
    order = {f.key: i for i, f in enumerate(futures)}
    results: dict[int, R] = {}
    try:
        for future in as_completed(futures):
            i = order[future.key]
            results[i] = finish(items[i], future.result())
            if on_done is not None:
                on_done(results[i])
    except BaseException:
        client.cancel(futures)
        done.extend(results[i] for i in sorted(results))
        raise
    done.extend(results[i] for i in range(len(futures)))

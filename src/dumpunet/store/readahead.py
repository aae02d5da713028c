"""Read ahead: while one item of a long loop over chunks is worked on, the next items' chunks are already on their way.

A render from a store at a URL reads one chunk per grid. Read one after another, every grid
waits for its request's round trip; the drawing of one grid takes less. :func:`read_ahead` wraps
the loop's items (grids, export groups, Auto first-pass slabs): as an item is handed out, the
chunks of the next items, up to ``window`` chunks, are requested concurrently on zarr's event loop
(:meth:`~dumpunet.store.chunks.ChunkFiles.fetch_ahead`), so the round trips overlap with the
work and with each other. The read of each chunk then takes what its request brought, so

- every chunk is requested as often as without reading ahead (a request started ahead serves
  one read), and only chunks of the loop's own items: none beyond its last item;
- a missing or damaged chunk, a server error, is met by that chunk's own read and reported as
  without reading ahead (:func:`~dumpunet.store.chunks.read_chunk`);
- about ``window`` chunks are held beyond the items already handed out (an item's chunks are
  started together); when the loop ends early (an error, Ctrl-C) the requests of items never
  read are dropped, and cancelled where still open (a request already sent was sent).

Local stores are read as before: :meth:`ChunkRef.start` does nothing there.

``window`` defaults to zarr's own bound on concurrent chunk requests, the config value
``async.concurrency`` (10 unless set: ``zarr.config.set({"async.concurrency": 32})`` or the
environment variable ``ZARR_ASYNC__CONCURRENCY=32``).

Examples
--------
>>> with read_ahead(range(3), lambda i: []) as items:
...     list(items)
[0, 1, 2]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import zarr

from dumpunet.errors import OptionError
from dumpunet.store.chunks import ChunkFiles, chunk_ahead

__all__ = ["WINDOW", "ChunkRef", "default_window", "read_ahead"]

T = TypeVar("T")

WINDOW: int | None = None
"""Chunks to request ahead when a caller gives no window; None: zarr's ``async.concurrency`` (0 turns reading ahead off)."""


@dataclass(frozen=True, eq=False)
class ChunkRef:
    """One chunk that a read will take: which store's files, which array, which chunk coordinates."""

    files: ChunkFiles
    array: zarr.Array
    coords: tuple[int, ...]

    def start(self) -> str | None:
        """Start its request (a remote store's uncompressed chunk); the key started, or None."""
        return chunk_ahead(self.files, self.array, self.coords)


def default_window() -> int:
    """How many chunks to request ahead: :data:`WINDOW`, or zarr's ``async.concurrency``."""
    return int(zarr.config.get("async.concurrency")) if WINDOW is None else WINDOW


@contextmanager
def read_ahead(items: Iterable[T], chunks: Callable[[T], Sequence[ChunkRef]], window: int | None = None) -> Iterator[Iterator[T]]:
    """The items, unchanged and in order, while the chunks of the next ones (``chunks(item)``) are fetched ahead.

    Handing out an item starts the requests of the items after it while fewer than ``window``
    chunks are ahead of it (an item's chunks are started together, however many). Leaving the
    context drops the requests of items that were never read. ``window=0`` starts nothing.
    """
    window = default_window() if window is None else window
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise OptionError(f"read-ahead window must be a whole number of at least 0, got {window!r}")
    started: list[tuple[ChunkFiles, str, str]] = []  # every request this loop started: dropped at the end if unread

    def begin(item: T) -> int:
        refs = chunks(item)
        for ref in refs:
            key = ref.start()
            if key is not None:
                started.append((ref.files, ref.array.path, key))
        return len(refs)

    def stream() -> Iterator[T]:
        source = iter(items)
        ahead: deque[tuple[T, int]] = deque()  # items taken from the source, their chunks started
        beyond = 0  # chunks of the items in ``ahead``
        exhausted = False
        while True:
            if not ahead:
                first = next(source, _END)
                if first is _END:
                    return
                n = begin(first) if window else 0  # the first item's chunks, as it is read
                ahead.append((first, n))
                beyond += n
            item, n = ahead.popleft()
            beyond -= n
            while not exhausted and beyond < window:
                nxt = next(source, _END)
                if nxt is _END:
                    exhausted = True
                    break
                n = begin(nxt)
                ahead.append((nxt, n))
                beyond += n
            yield item

    try:
        yield stream()
    finally:
        for files, path, key in started:
            files.drop_ahead(path, key)  # a no-op for every key that was read


_END = object()

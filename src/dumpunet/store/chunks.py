"""Chunk files checked before they are read: present, regular, of their array's byte size.

zarr turns a missing chunk into fill values and fails on a truncated one with a reshape error
deep in its codec pipeline. The reader and ``validate`` ask this module first: what one chunk of
an array should weigh (:func:`raw_chunk_bytes`, from the array's codecs as the schema writes
them), whether an array's layout is the schema's (:func:`layout_problem`: dims, chunk shape, a
bounded chunk size, before anything is allocated), whether a call table's chunks are all there
(:func:`call_table_problem`), and what is wrong with one chunk file (:func:`chunk_problem`).
:func:`read_chunk` reads one chunk after these checks and raises :class:`DamagedChunkError`
naming the array, the call and the step.

Existence and sizes go through zarr's store API, so the same checks run on any zarr store; on a
local store (:class:`~dumpunet.store.localfiles.SafeLocalStore`) they go straight to its
:class:`~dumpunet.store.localfiles.StoreFiles` (the same checks, without a trip through zarr's
event loop, which cost a heatmap of 96 chunks most of its time), and a link or special file in
place of a chunk is reported as such, never read. An uncompressed chunk is read as its bytes,
its length checked, in one read (:func:`read_chunk`).

A remote chunk that :func:`read_chunk` will read in one request can be asked for ahead
(:meth:`ChunkFiles.fetch_ahead`, through :func:`chunk_ahead`): the request starts at once on
zarr's event loop, beside any others, and the next read of that key takes its result, or its
error, exactly as a read of its own would have met it. :mod:`.readahead` decides what to ask for.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from dumpunet.errors import DamagedChunkError, DumpUnetError
from dumpunet.store.localfiles import SafeLocalStore, StoreFiles, UnsafeFileError
from dumpunet.store.schema import ArrayKind, human_bytes

__all__ = ["MAX_CHUNK_BYTES", "ChunkFiles", "call_table_problem", "chunk_ahead", "chunk_problem", "layout_problem",
           "raw_chunk_bytes", "read_chunk", "read_chunk_rows"]

MAX_CHUNK_BYTES = 4 << 30
"""The largest decoded chunk a reader allocates (4 GiB). SD's largest slab (an SDXL self-attention
map of 4096x4096 queries per head) stays far below it; metadata that claims more is refused."""


class ChunkFiles:
    """Existence and byte size of a store's keys, through zarr's store API (a local store's files directly)."""

    def __init__(self, store: ZarrStore, prefix: str) -> None:
        self.store = store
        self.prefix = f"{prefix}/" if prefix else ""
        self.remote = not isinstance(store, LocalStore)
        # a local store's files are read in this thread: zarr's sync() costs ~1 ms per call here
        self.local: StoreFiles | None = store.files if isinstance(store, SafeLocalStore) else None
        self._ahead: dict[str, Future[Buffer | None]] = {}  # requests started by fetch_ahead, not yet read
        self._ahead_lock = threading.Lock()

    def read(self, array_path: str, key: str) -> bytes | None:
        """The bytes of one chunk file; None if it is missing. A key fetched ahead is not requested again."""
        full = f"{self.prefix}{array_path}/{key}"
        if self.local is not None:
            return self.local.read(full)
        with self._ahead_lock:
            ahead = self._ahead.pop(full, None)
        # a request started ahead raises what sync() would have raised: the store's own exception
        buf = ahead.result() if ahead is not None else sync(self.store.get(full, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def fetch_ahead(self, array_path: str, key: str) -> bool:
        """Start the request for one key of a remote store now; the next :meth:`read` of it takes the result.

        False where nothing was started: a local store (its files are read in the reading thread),
        or a request for the key already on its way.
        """
        if self.local is not None:
            return False
        full = f"{self.prefix}{array_path}/{key}"
        with self._ahead_lock:
            if full in self._ahead:
                return False
            self._ahead[full] = _start(self.store.get(full, prototype=default_buffer_prototype()))
        return True

    def drop_ahead(self, array_path: str, key: str) -> None:
        """Forget a key fetched ahead that will not be read after all (its request is cancelled if still open)."""
        with self._ahead_lock:
            ahead = self._ahead.pop(f"{self.prefix}{array_path}/{key}", None)
        if ahead is not None:
            ahead.cancel()

    def read_exact(self, array_path: str, key: str, nbytes: int) -> tuple[int, bytes | np.ndarray | None] | None:
        """``(size, bytes)`` of one chunk file of ``nbytes``; ``(size, None)`` if it has another size; None if missing.

        A local file of the wrong size is not read (:meth:`StoreFiles.read_exact`); a remote one
        is fetched whole (one request, not a HEAD and a GET).
        """
        if self.local is not None:
            return self.local.read_exact(f"{self.prefix}{array_path}/{key}", nbytes)
        data = self.read(array_path, key)
        return None if data is None else (len(data), data if len(data) == nbytes else None)

    def keys(self, array_path: str) -> set[str]:
        """Chunk keys under one array (relative to it), from one listing."""
        base = f"{self.prefix}{array_path}/"

        async def collect() -> list[str]:
            return [k async for k in self.store.list_prefix(base)]

        return {k[len(base):] for k in sync(collect()) if not k.endswith("zarr.json")}

    def size(self, array_path: str, key: str) -> int | None:
        """Byte size of one chunk file; None if it is missing (a link or special file raises)."""
        if self.local is not None:
            return self.local.size(f"{self.prefix}{array_path}/{key}")
        try:
            return int(sync(self.store.getsize(f"{self.prefix}{array_path}/{key}")))
        except FileNotFoundError:
            return None


def raw_chunk_bytes(arr: zarr.Array) -> int | None:
    """Byte size of every chunk file of an uncompressed array; None where codecs make it vary."""
    if arr.compressors or arr.filters or arr.shards is not None:
        return None
    return math.prod(arr.chunks) * arr.dtype.itemsize


def layout_problem(full: str, arr: zarr.Array, kind: ArrayKind) -> str | None:
    """What is wrong with an array's dims or chunking for this schema, before anything is read."""
    dims = tuple(arr.metadata.dimension_names or ())
    if dims != kind.dims:
        return f"{full}: dimension names {dims}, expected {kind.dims}"
    want = kind.chunks(arr.shape)
    if tuple(arr.chunks) != tuple(want):
        return f"{full}: chunk shape {tuple(arr.chunks)}, expected {tuple(want)} for shape {tuple(arr.shape)}"
    if arr.shards is not None:
        return f"{full}: sharded, which this schema never writes"
    nbytes = math.prod(want) * arr.dtype.itemsize
    if nbytes > MAX_CHUNK_BYTES:
        return f"{full}: shape {tuple(arr.shape)} claims chunks of {human_bytes(nbytes)}, more than a reader allocates"
    return None


def chunk_problem(files: ChunkFiles, full: str, arr: zarr.Array, key: str, *, sizes: bool = True) -> str | None:
    """What is wrong with one chunk file that should exist: missing, not regular, or (``sizes``) of the wrong size."""
    try:
        size = files.size(full, key)
    except UnsafeFileError as exc:
        return f"chunk {key} is {exc.what}, not a regular file (not read)"
    if size is None:
        return f"chunk {key} is missing"
    expected = raw_chunk_bytes(arr) if sizes else None
    if expected is not None and size != expected:
        return f"chunk {key} is {size} bytes, expected {expected} ({'truncated' if size < expected else 'oversized'})"
    return None


def call_table_problem(files: ChunkFiles, full: str, arr: zarr.Array, *, strict: bool = False) -> str | None:
    """What stops a 1-D call table from being read whole: a claimed length its chunk files cannot hold, a damaged chunk.

    The listing comes first, so a table claiming 10**12 calls is refused without a loop over them.
    ``strict`` (validate) also wants every chunk present: dumpunet's writer writes them all, but a
    store written with plain zarr leaves an all-zero chunk out, which reads as zeros (not done).
    """
    n, chunk = arr.shape[0], arr.chunks[0]
    keys = files.keys(full)
    needed = [arr.metadata.encode_chunk_key((c,)) for c in range(math.ceil(n / chunk))] if n <= chunk * (len(keys) + 1) else None
    if needed is None or (strict and any(k not in keys for k in needed)):
        return f"{full}: claims {n} calls but holds {len(keys)} chunk(s) of {chunk} calls"
    for key in needed:
        problem = chunk_problem(files, full, arr, key) if key in keys or strict else None
        if problem is not None:
            return f"{full}: {problem} (damaged call table)"
    return None


def _start(coro: Coroutine[Any, Any, Buffer | None]) -> Future[Buffer | None]:
    """Run a store coroutine on zarr's own event loop (where ``sync`` runs it) without waiting for it."""
    from zarr.core.sync import _get_loop

    return asyncio.run_coroutine_threadsafe(coro, _get_loop())


def _one_request(files: ChunkFiles, arr: zarr.Array, coords: Sequence[int]) -> int | None:
    """The byte size of the chunk at ``coords`` where :func:`read_chunk` reads it whole in one read, else None.

    That is an uncompressed chunk inside the array's shape, of a local or remote store; others go
    through zarr's codec pipeline.
    """
    expected = raw_chunk_bytes(arr)
    if not (files.remote or files.local is not None) or expected is None:
        return None
    inside = all((c + 1) * n <= size for c, n, size in zip(coords, arr.chunks, arr.shape, strict=True))
    return expected if inside else None


def chunk_ahead(files: ChunkFiles, arr: zarr.Array, coords: Sequence[int]) -> str | None:
    """Start fetching the chunk that ``read_chunk(files, arr, coords, ...)`` will read; return its key.

    None where nothing started: a local store, a chunk that read_chunk reads through zarr, or one
    already on its way. The read that follows reports a missing or damaged chunk as without this.
    """
    if not files.remote or _one_request(files, arr, coords) is None:
        return None
    key = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    return key if files.fetch_ahead(arr.path, key) else None


def read_chunk(files: ChunkFiles, arr: zarr.Array, coords: Sequence[int], what: str) -> np.ndarray:
    """Read the one chunk at ``coords`` (chunk coordinates of a one-chunk selection) after checking its file.

    ``what`` names the chunk for people (``call 1 (step 2), image 0, cond``); every failure is a
    :class:`DamagedChunkError` naming the array and ``what``.
    """
    full = arr.path
    key = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    index = tuple(slice(c * n, (c + 1) * n) for c, n in zip(coords, arr.chunks, strict=True))
    expected = _one_request(files, arr, coords)
    if expected is not None:
        return _read_raw(files, arr, key, expected, what)
    problem = chunk_problem(files, full, arr, key)
    if problem is not None:
        raise DamagedChunkError(f"{full}: {what}: {problem}")
    try:
        return arr[index]
    except DumpUnetError as exc:
        raise DamagedChunkError(f"{full}: {what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  any decoding failure of this one chunk means the chunk is damaged
        raise DamagedChunkError(f"{full}: {what}: chunk {key} cannot be decoded ({type(exc).__name__}: {_first_line(exc)})") from None


def read_chunk_rows(files: ChunkFiles, arr: zarr.Array, coords: Sequence[int], what: str,
                    scratch: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """The chunk at ``coords`` as rows of its last axis, read a block at a time: ``(first row, rows [n, last])``.

    The chunk's elements are taken as a C-order 2-D array (``rows``, its last axis): a local
    uncompressed chunk is read into ``scratch`` (flat uint8) a block of whole rows at a time
    (:meth:`StoreFiles.read_blocks`: a buffer small enough to stay in the CPU's cache), each
    block a view of it valid until the next is read; any other chunk comes whole, as
    :func:`read_chunk` reads it, in one block. The checks and errors are :func:`read_chunk`'s.
    """
    last, dtype = arr.chunks[-1], np.dtype(arr.dtype)
    row_bytes = last * dtype.itemsize
    expected = _one_request(files, arr, coords)
    endian = getattr(getattr(arr.serializer, "endian", None), "value", "little")
    native = dtype.newbyteorder(">" if endian == "big" else "<").isnative
    if expected is None or files.local is None or not native or row_bytes == 0 or scratch.nbytes < row_bytes:
        yield 0, read_chunk(files, arr, coords, what).reshape(-1, last)
        return
    key = arr.metadata.encode_chunk_key(tuple(int(c) for c in coords))
    buf = scratch[: scratch.nbytes // row_bytes * row_bytes]
    try:
        found = files.local.read_blocks(f"{files.prefix}{arr.path}/{key}", expected, buf)
    except UnsafeFileError as exc:
        raise DamagedChunkError(f"{arr.path}: {what}: chunk {key} is {exc.what}, not a regular file (not read)") from None
    if found is None:
        raise DamagedChunkError(f"{arr.path}: {what}: chunk {key} is missing")
    if isinstance(found, tuple):
        state = "truncated" if found[0] < expected else "oversized"
        raise DamagedChunkError(f"{arr.path}: {what}: chunk {key} is {found[0]} bytes, expected {expected} ({state})")
    row = 0
    try:
        for block in found:
            rows = block.view(dtype).reshape(-1, last)
            yield row, rows
            row += len(rows)
    except DumpUnetError as exc:
        raise DamagedChunkError(f"{arr.path}: {what}: {exc}") from None
    finally:
        found.close()


def _read_raw(files: ChunkFiles, arr: zarr.Array, key: str, expected: int, what: str) -> np.ndarray:
    """One whole uncompressed chunk in one read (a remote store: one request), its length checked as :func:`chunk_problem` does."""
    try:
        found = files.read_exact(arr.path, key, expected)
    except UnsafeFileError as exc:
        raise DamagedChunkError(f"{arr.path}: {what}: chunk {key} is {exc.what}, not a regular file (not read)") from None
    except DumpUnetError:
        raise
    except Exception as exc:  # noqa: BLE001  a network or permission failure names the chunk, no traceback
        raise DamagedChunkError(f"{arr.path}: {what}: chunk {key} cannot be read ({type(exc).__name__}: {_first_line(exc)})") from None
    if found is None:
        raise DamagedChunkError(f"{arr.path}: {what}: chunk {key} is missing")
    size, data = found
    if data is None:
        state = "truncated" if size < expected else "oversized"
        raise DamagedChunkError(f"{arr.path}: {what}: chunk {key} is {size} bytes, expected {expected} ({state})")
    endian = getattr(getattr(arr.serializer, "endian", None), "value", "little")  # the bytes codec's byte order
    stored = np.dtype(arr.dtype).newbyteorder(">" if endian == "big" else "<")
    out = np.frombuffer(data, dtype=stored).reshape(arr.chunks)
    # a local chunk's buffer is fresh and writable: in native byte order it is the array itself
    return out if out.flags.writeable and stored.isnative else out.astype(np.dtype(arr.dtype).newbyteorder("="))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no message"

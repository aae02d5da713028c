"""Read a store's files as regular files below its root, and nothing else.

A store from someone else is untrusted input: a chunk file may be a symbolic link to
``/etc/passwd`` or ``/dev/zero``, a FIFO that blocks the first ``open``, a device or a folder.
:class:`StoreFiles` opens every key one path component at a time with ``O_NOFOLLOW`` (so no link
is followed, whether it points in or out of the store) and ``O_NONBLOCK`` (so a FIFO does not
block), and reads only what ``fstat`` calls a regular file. :class:`SafeLocalStore` is zarr's
``LocalStore`` reading through it, so every read of a dumpunet reader, zarr's own metadata reads
included, goes through these checks.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore

from dumpunet.errors import StoreError

__all__ = ["SafeLocalStore", "StoreFiles", "UnsafeFileError"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFileError(StoreError):
    """A key of the store that is a link, FIFO, device, socket or folder instead of a regular file."""

    def __init__(self, key: str, what: str) -> None:
        self.key = key
        self.what = what
        super().__init__(f"{key} is {what}, not a regular file (a store holds only regular files; it is not read)")


def describe_mode(mode: int) -> str:
    """What a file of this ``st_mode`` is, as an error message says it.

    Examples
    --------
    >>> describe_mode(stat.S_IFIFO), describe_mode(stat.S_IFLNK)
    ('a FIFO', 'a symbolic link')
    """
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return what
    return "not a regular file"


class StoreFiles:
    """The files below a store's root, opened without following links, read only if regular.

    Keys are zarr keys (``runs/main/call_done/c.0``). A missing key is ``None``; a key that is
    (or passes through) a link, FIFO, device, socket or folder raises :class:`UnsafeFileError`.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "a").write_bytes(b"xyz"); os.symlink("/etc/passwd", d / "b")
    3
    >>> files = StoreFiles(d)
    >>> files.read("a"), files.size("a"), files.read("missing")
    (b'xyz', 3, None)
    >>> files.read_exact("a", 3)[1].tobytes(), files.read_exact("a", 4), files.read_exact("missing", 3)
    (b'xyz', (3, None), None)
    >>> files.read("b")
    Traceback (most recent call last):
    ...
    dumpunet.store.localfiles.UnsafeFileError: b is a symbolic link, not a regular file (a store holds only regular files; it is not read)
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _open(self, key: str) -> int | None:
        """A read-only descriptor of the regular file at ``key``; None if it does not exist."""
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"{key!r} is not a key of this store")
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root itself: the user's choice
        except FileNotFoundError:
            return None
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    nxt = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    return None
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EMLINK):
                        raise
                    # O_NOFOLLOW met a link, or a path component is not a folder: say what it is
                    info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISREG(info.st_mode):  # a file where a folder would be: the key is not there
                        return None
                    raise UnsafeFileError("/".join(parts[: i + 1]), describe_mode(info.st_mode)) from None
                os.close(fd)
                fd = nxt
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise UnsafeFileError(key, describe_mode(mode))
            out, fd = fd, -1
            return out
        finally:
            if fd >= 0:
                os.close(fd)

    def size(self, key: str) -> int | None:
        """Byte size of the regular file at ``key``; None if it does not exist."""
        fd = self._open(key)
        if fd is None:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read(self, key: str, byte_range: ByteRequest | None = None) -> bytes | None:
        """The bytes of the regular file at ``key`` (or of a range of it); None if it does not exist."""
        fd = self._open(key)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as fh:
            if byte_range is None:
                return fh.read()
            size = os.fstat(fh.fileno()).st_size
            if isinstance(byte_range, RangeByteRequest):
                fh.seek(byte_range.start)
                return fh.read(max(0, byte_range.end - byte_range.start))
            if isinstance(byte_range, OffsetByteRequest):
                fh.seek(byte_range.offset)
            elif isinstance(byte_range, SuffixByteRequest):
                fh.seek(max(0, size - byte_range.suffix))
            else:
                raise TypeError(f"unexpected byte range {byte_range!r}")
            return fh.read()

    def read_exact(self, key: str, nbytes: int) -> tuple[int, np.ndarray | None] | None:
        """``(size, bytes)`` of the regular file at ``key`` if it holds exactly ``nbytes``, ``(size, None)``
        (not read) if it holds another number; None if it does not exist.

        The bytes are read into a fresh, writable uint8 array (no zero-filling, no second copy for an
        array over them).
        """
        fd = self._open(key)
        if fd is None:
            return None
        with os.fdopen(fd, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size != nbytes:
                return size, None
            buf = np.empty(nbytes, np.uint8)
            view, got = memoryview(buf).cast("B"), 0
            while got < nbytes:
                n = fh.readinto(view[got:])
                if not n:  # shorter than fstat said: cut while we read
                    return got, None
                got += n
            return size, buf

    def read_blocks(self, key: str, nbytes: int, buf: np.ndarray) -> Iterator[np.ndarray] | tuple[int, None] | None:
        """The regular file at ``key`` read in turn into ``buf`` (flat uint8): an iterator of views of it,
        each ``len(buf)`` bytes but the last; ``(size, None)`` (not read) if the file does not hold
        exactly ``nbytes``; None if it does not exist.

        A view is valid until the next one is read over it. Reading a large file through a buffer
        that stays in the CPU's cache moves each byte from memory once, where a whole-file read
        writes it to fresh memory and reads it back (three times the traffic, which on a busy
        machine costs more than the reading). A file that ends early while it is read raises
        :class:`StoreError`; the file is closed when the iterator ends or is closed.
        """
        fd = self._open(key)
        if fd is None:
            return None
        size = os.fstat(fd).st_size
        if size != nbytes:
            os.close(fd)
            return size, None
        return self._blocks(fd, key, nbytes, buf)

    @staticmethod
    def _blocks(fd: int, key: str, nbytes: int, buf: np.ndarray) -> Iterator[np.ndarray]:
        try:
            done = 0
            while done < nbytes:
                view = buf[: min(len(buf), nbytes - done)]
                got = 0
                while got < len(view):
                    n = os.preadv(fd, [view[got:]], done + got)
                    if not n:
                        raise StoreError(f"{key} ended at {done + got} bytes while it was read, expected {nbytes} (truncated)")
                    got += n
                yield view
                done += len(view)
        finally:
            os.close(fd)

    def unsafe_entries(self) -> Iterator[tuple[str, str]]:
        """Every entry below the root that is neither a regular file nor a folder: (key, what it is).

        Links are reported, never followed (into folders neither).
        """
        stack = [""]
        while stack:
            prefix = stack.pop()
            try:
                entries = sorted(os.scandir(self.root / prefix) if prefix else os.scandir(self.root), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                key = f"{prefix}{entry.name}"
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    stack.append(key + "/")
                elif not stat.S_ISREG(mode):
                    yield key, describe_mode(mode)


class SafeLocalStore(LocalStore):
    """zarr's ``LocalStore`` whose reads go through :class:`StoreFiles` (writes are zarr's own).

    A key that is a link or a special file raises :class:`UnsafeFileError` instead of being read,
    so zarr never turns an outside file's bytes (or a FIFO's wait) into an array.
    """

    @property
    def files(self) -> StoreFiles:
        return StoreFiles(self.root)

    def _read(self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None) -> Buffer | None:
        data = self.files.read(key, byte_range)
        return None if data is None else (prototype or default_buffer_prototype()).buffer.from_bytes(data)

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        if not self._is_open:
            await self._open()
        return await asyncio.to_thread(self._read, key, prototype, byte_range)

    def get_sync(self, key: str, *, prototype: BufferPrototype | None = None,
                 byte_range: ByteRequest | None = None) -> Buffer | None:
        self._ensure_open_sync()
        return self._read(key, prototype, byte_range)

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.files.size, key) is not None

    async def getsize(self, key: str) -> int:
        size = await asyncio.to_thread(self.files.size, key)
        if size is None:
            raise FileNotFoundError(key)
        return size

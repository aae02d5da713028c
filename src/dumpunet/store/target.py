"""Where a recording goes: the ``--out`` path checked first, the store created whole, one owner at a time.

:func:`check_target` refuses what ``record --out`` must never touch, before a model is loaded:
an empty path, a symbolic link (dangling, or pointing at a store that ``--overwrite`` would
then delete through the link), the folder the user is in (or one holding it), a file or a
foreign folder, an existing store without ``--overwrite``, a missing parent folder.

:class:`StoreLock` is the file ``.<name>.lock`` beside the store, holding its owner's process
id under an exclusive ``flock``: a second recording into the same path refuses while the first
is alive. The kernel drops the lock when its owner dies (even by ``kill -9``), so the lock file
a killed recording leaves behind is simply taken over.

:func:`create_store` writes the root ``zarr.json`` with the dumpunet header into a hidden
sibling folder and renames it into place (moving an old store aside first when overwriting): a
kill at any moment leaves either no store, the old store, or a new store with its header, never
a ``zarr.json`` without one. Siblings left by a killed run are removed by the next one.

Examples
--------
>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> with StoreLock(d / "a.zarr"):
...     create_store(d / "a.zarr", {"dumpunet": {"kind": "demo"}})
...     sorted(p.name for p in d.iterdir())
['.a.zarr.lock', 'a.zarr']
>>> check_target(d / "a.zarr", overwrite=False)
Traceback (most recent call last):
dumpunet.errors.RecordError: ... already exists; choose another --out or pass --overwrite
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dumpunet.errors import RecordError, StoreError
from dumpunet.files import os_error_advice, pid_alive, write_atomic
from dumpunet.store import schema

try:
    import fcntl
except ImportError:  # Windows: the lock file is written but not enforced
    fcntl = None  # type: ignore[assignment]

__all__ = ["StoreLock", "check_target", "create_store"]


def check_target(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse an ``--out`` that a recording must not create or replace; return it as a path."""
    if os.fspath(path) == "":
        raise RecordError("--out is an empty path; give the store a name, e.g. --out girl.zarr")
    p = Path(path)
    if p.is_symlink():
        target = os.readlink(p)
        state = "" if p.exists() else ", which does not exist"
        raise RecordError(f"{p} is a symbolic link to {target}{state}; give --out the store's real path or a new name")
    here = Path.cwd().resolve()
    real = p.resolve()
    if real == here or real in here.parents:
        raise RecordError(f"{p} is the folder you are in (or holds it); give --out a new folder name")
    if not real.parent.is_dir():
        raise RecordError(f"cannot create {p}: folder {p.parent} does not exist")
    if not p.exists():
        return p
    if not overwrite:
        raise RecordError(f"{p} already exists; choose another --out or pass --overwrite")
    if p.is_dir() and not any(p.iterdir()):
        return p
    try:
        schema.open_root(p)
    except StoreError:
        raise RecordError(f"{p} exists and is not a dumpunet store; --overwrite only replaces dumpunet stores") from None
    return p


class StoreLock:
    """``.<name>.lock`` beside a store: held (with the owner's pid in it) while one process records there.

    Use as a context manager, or :meth:`acquire` / :meth:`release`. :meth:`owner` tells, without
    taking it, which live process holds it.
    """

    def __init__(self, store: str | os.PathLike[str]) -> None:
        store = Path(store)
        self.store = store
        self.path = store.parent / f".{store.name}.lock"
        self._fd: int | None = None

    def owner(self) -> int | None:
        """The pid of the live process that holds the lock, or None if it is free."""
        if self._fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            if fcntl is None:
                pid = _read_pid(fd)
                return pid if pid and pid_alive(pid) else None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_pid(fd) or -1
            return None
        finally:
            os.close(fd)

    def check_free(self) -> None:
        """Raise the error :meth:`acquire` would raise if a live process holds the lock now."""
        pid = self.owner()
        if pid is not None:
            raise self._busy(pid)

    def _busy(self, pid: int | None) -> RecordError:
        who = f"process {pid}" if pid and pid > 0 else "another process"
        return RecordError(f"{self.store} is being recorded by {who} (lock file {self.path}); "
                           "wait for it to finish or stop it, or choose another --out")

    def acquire(self) -> StoreLock:
        """Take the lock, or raise :class:`RecordError` naming the process that holds it."""
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RecordError(f"cannot create the lock file {self.path}: {os_error_advice(exc)}") from None
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    pid = _read_pid(fd)
                    if pid and pid != os.getpid() and pid_alive(pid):
                        raise BlockingIOError
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise self._busy(pid) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file after we opened it: take the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing if not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def create_store(path: Path, attributes: Mapping[str, Any], *, overwrite: bool = False) -> None:
    """Create the store's root (``zarr.json`` with ``attributes``) in a hidden sibling and rename it into place.

    Hold the store's :class:`StoreLock` around this. With ``overwrite`` an existing store (or an
    empty folder) at ``path`` is replaced: moved aside under a hidden name, then removed.
    """
    path = Path(path)
    check_target(path, overwrite=overwrite)
    _remove_stale_siblings(path)
    pid = os.getpid()
    new, old = path.parent / f".{path.name}.{pid}.new", path.parent / f".{path.name}.{pid}.old"
    doc = {**schema.GROUP_DOCUMENT, "attributes": dict(attributes)}
    try:
        new.mkdir()
        write_atomic(new / "zarr.json", json.dumps(doc).encode())
        if path.exists():
            os.rename(path, old)
        os.rename(new, path)
    except OSError as exc:
        shutil.rmtree(new, ignore_errors=True)
        raise RecordError(f"cannot create {path}: {os_error_advice(exc)}") from None
    shutil.rmtree(old, ignore_errors=True)


_SIBLING = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(new|old)")


def _remove_stale_siblings(path: Path) -> None:
    """Remove the half-made or half-removed stores a killed recording into ``path`` left beside it."""
    for p in path.parent.iterdir():
        m = _SIBLING.fullmatch(p.name)
        if m and m["name"] == path.name and not pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)

"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Temporary files are hidden siblings named ``.<name>.<pid>.<random>.tmp``: the writer's process
id in the name lets a later run tell a live writer's file from one a killed run left behind
(:func:`stale_temp_files`).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["os_error_advice", "pid_alive", "stale_temp_files", "write_atomic"]

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file

_TEMP_NAME = re.compile(r"\..+\.(?P<pid>[^.]+)\.[^.]+\.tmp")
"""A temporary file of :func:`write_atomic` (mkstemp's random part holds no dot)."""

_ADVICE = {
    errno.ENOSPC: "free some space or choose a folder on another disk",
    errno.EDQUOT: "free some space or choose a folder on another disk",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
    errno.EROFS: "choose a folder on a writable file system",
}


def os_error_advice(exc: OSError) -> str:
    """What went wrong and what to do, in words: ``No space left on device; free some space ...``."""
    what = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno or 0)
    return f"{what}; {advice}" if advice else what


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp_files(folder: Path) -> Iterator[Path]:
    """The temporary files in ``folder`` whose writer is no longer running (a killed run's)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _TEMP_NAME.fullmatch(name)
        if m is None:
            continue
        pid = m["pid"]
        if not pid.isdigit() or not pid_alive(int(pid)):  # no pid: an older dumpunet's leftover
            yield folder / name


def write_atomic(path: Path, content: bytes | Callable[[IO[bytes]], None]) -> None:
    """Write ``content`` (bytes, or a function writing to a binary file) to ``path`` atomically.

    The content goes to a hidden temporary file in the same folder, which then replaces ``path``;
    on any failure (Ctrl-C included) the temporary file is removed.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.bin"
    >>> write_atomic(p, b"abc"); p.read_bytes()
    b'abc'
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, (bytes, bytearray, memoryview)):
                fh.write(content)
            else:
                content(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

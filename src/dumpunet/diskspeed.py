"""How fast a folder's disk takes data: measured once (write + fsync), cached per file system.

A recording at GPU speed produces more bytes per second than most disks write (SD1.5 at 512²,
all blocks and cross-attention: ~135 MB per step), so the size estimate also predicts how long
the disk needs (:func:`disk_seconds`). The speed comes from ``--disk-speed`` or from a small
measurement (64 MB written and fsynced in the target folder), cached in
``<cache dir>/dumpunet/disk-speed.json`` per file system (device id), so a machine pays for it once.

No torch here: the benchmarks and the CLI both use it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dumpunet.files import write_atomic

__all__ = ["MEASURE_BYTES", "cache_dir", "cached_speed", "measure_write_speed"]

MEASURE_BYTES = 64 << 20
"""Bytes written to measure a disk: enough to pass most write caches' bursts, ~0.1 s on an SSD."""

_BLOCK = 8 << 20


def cache_dir() -> Path:
    """The user's cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``; ``%LOCALAPPDATA%`` on Windows)."""
    base = os.environ.get("XDG_CACHE_HOME") or (os.environ.get("LOCALAPPDATA") if os.name == "nt" else None)
    return Path(base) if base else Path.home() / ".cache"


def measure_write_speed(folder: Path, nbytes: int = MEASURE_BYTES) -> float:
    """Bytes per second of ``write`` + ``fsync`` of ``nbytes`` to a new file in ``folder`` (removed after).

    The data is random (a compressing file system would flatter zeros).
    """
    block = os.urandom(min(_BLOCK, nbytes))
    path = Path(folder) / f".dumpunet-disk-speed.{os.getpid()}.tmp"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = nbytes
        while left:
            left -= os.write(fd, block[: min(left, len(block))])
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return nbytes / max(time.perf_counter() - t0, 1e-9)


def cached_speed(folder: Path, *, cache: Path | None = None, measure: bool = True) -> float | None:
    """The write speed (bytes/s) of ``folder``'s file system: from the cache, else measured once and cached.

    ``cache`` is the cache folder (default :func:`cache_dir`); ``measure=False`` only reads the
    cache. None when nothing is cached and measuring is off or fails (a folder not writable yet).
    """
    folder = Path(folder)
    file = (cache or cache_dir()) / "dumpunet" / "disk-speed.json"
    try:
        key = str(os.stat(folder).st_dev)
    except OSError:
        return None
    try:
        known = json.loads(file.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("bytes_per_second"), (int, float)) and entry["bytes_per_second"] > 0:
        return float(entry["bytes_per_second"])
    if not measure:
        return None
    try:
        speed = measure_write_speed(folder)
    except OSError:
        return None
    known[key] = {"bytes_per_second": speed, "measured_in": str(folder.resolve()),
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(file, json.dumps(known, indent=2).encode())
    except OSError:
        pass  # an unwritable cache: measure again next time
    return speed

"""Where rendered and exported files go: one output folder, atomic writes, a ``manifest.json``.

Every command that writes files (render, export, attention, heatmap, diff, the sweep's contact
sheets, the viewer's report) goes through one :class:`OutputFolder`: made before any work
starts, it refuses an empty path, a path that is a file and a folder holding a foreign or newer
manifest, so a mistake writes nothing; entered, it creates the folder and removes the temporary
files a killed run left there; :meth:`OutputFolder.write` writes each file atomically and notes
its manifest entry.

File names are built from names read from a store (blocks, layers), from the user's text
(tokens, words) and from numbers. A store may come from someone else, so every name goes through
:func:`output_path`, which refuses a name that is not one plain file name or that would resolve
outside ``--out``; :func:`name_part` checks a store name against the store's name grammar and
:func:`text_part` turns free text into a safe, distinct part. The colorization's part is
:meth:`~dumpunet.analyzer.color.spec.ColorSpec.slug` (its parameters, readably: ``wb-sigmoid-g1.5-o0``),
which uses :func:`text_part` for Custom expressions.

Every file is written under a temporary name in its own folder and moved into place with
:func:`os.replace`, so a reader (or a crash, or Ctrl-C) never sees a half-written PNG, array
or manifest: a file either is complete or is not there. A disk that is full, read-only or not
ours to write ends the command with one :class:`~dumpunet.errors.OutputError` naming the file
and what to do; the files written before it stay listed in the manifest.

The manifest lists every file of the folder with the parameters that made it, one JSON object
per file, sorted by file name. It is rewritten in batches while files are written (after the
first file, then at most every :data:`FLUSH_SECONDS` or :data:`FLUSH_FILES` files) and at the
end, also after a failure or Ctrl-C; each rewrite holds a lock on the folder and merges with
the manifest on disk (an entry of the same file name is replaced), so several renders into one
folder, even at the same time, accumulate, and a killed run leaves a manifest of the files it
had written up to its last batch.

``manifest.json``::

    {"dumpunet": {"kind": "dumpunet-manifest", "version": 1, "writer": "dumpunet 0.1.0"},
     "files": [{"file": "OUT11-step020-img0-cond-hsl-auto01.png",
                "kind": "render", "block": "OUT11", "step": 20, ...}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dumpunet._version import __version__
from dumpunet.errors import OutputError
from dumpunet.files import os_error_advice, stale_temp_files, write_atomic
from dumpunet.store.schema import NAME_PATTERN

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent writers may then lose entries
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FLUSH_FILES", "FLUSH_SECONDS", "MANIFEST", "Manifest", "OutputFolder", "WrittenFile", "check_folder",
    "folder_lock", "name_part", "output_path", "text_part", "write_atomic",
]

MANIFEST = "manifest.json"
MANIFEST_KIND = "dumpunet-manifest"
MANIFEST_VERSION = 1
FLUSH_SECONDS = 1.0
"""The manifest is rewritten at most this often while files are written (and at the end)."""
FLUSH_FILES = 256
"""... or after this many new files, whichever comes first."""


@dataclass(frozen=True)
class WrittenFile(os.PathLike):
    """One written file: its path (``os.fspath`` works, so ``Image.open(f)`` does) and manifest entry."""

    path: Path
    params: dict[str, Any]

    def __fspath__(self) -> str:
        return str(self.path)


def check_folder(path: str | os.PathLike[str]) -> Path:
    """Refuse an output folder path that is empty or a file (before anything is computed or created)."""
    if os.fspath(path) == "":
        raise OutputError("the output folder is an empty path; give --out a folder name")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file; choose a folder for --out")
    return folder


def name_part(name: Any, what: str) -> str:
    """Return a name read from a store (block, layer, run) for a file name, if the store's grammar allows it.

    Examples
    --------
    >>> name_part("OUT11.attn2", "layer")
    'OUT11.attn2'
    >>> name_part("../x", "layer")
    Traceback (most recent call last):
    dumpunet.errors.OutputError: the store's layer name '../x' cannot be part of a file name (letters, digits, _ . + - only); the store is damaged or crafted
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise OutputError(f"the store's {what} name {name!r} cannot be part of a file name "
                          "(letters, digits, _ . + - only); the store is damaged or crafted")
    return name


def text_part(text: str, *, limit: int = 32) -> str:
    """Free text (a word, a token list) as part of a file name: letters, digits and dashes.

    Text that is not already such a part gets a short hash of itself, so different texts
    (``pink,hair`` and ``pink hair``) never share a file name.

    Examples
    --------
    >>> text_part("hair"), text_part("pink,hair"), text_part("../../etc")
    ('hair', 'pink-hair-092680', 'etc-74ccf3')
    """
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit].strip("-")
    if slug == text and slug:
        return slug
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return f"{slug}-{digest}" if slug else digest


def output_path(out: str | os.PathLike[str], *parts: str) -> Path:
    """``out/part/...``: refuse a part that is not one plain, visible name, or a path resolving outside ``out``.

    Examples
    --------
    >>> output_path("renders", "OUT11-step020.png").as_posix()
    'renders/OUT11-step020.png'
    >>> output_path("renders", "/outside/ESCAPED-step001.png")
    Traceback (most recent call last):
    dumpunet.errors.OutputError: refusing to write '/outside/ESCAPED-step001.png' into renders: not a plain file name
    """
    folder = Path(out)
    path = folder
    for part in parts:
        if (not isinstance(part, str) or part.startswith(".") or "/" in part or "\\" in part or "\0" in part
                or not part.strip()):
            raise OutputError(f"refusing to write {part!r} into {folder}: not a plain file name")
        path = path / part
    base, real = folder.resolve(), path.resolve()
    if base not in real.parents:
        raise OutputError(f"refusing to write {path}: it resolves to {real}, outside the output folder {base}")
    return path


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (a ``flock`` on the folder itself: nothing to clean up)."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        head = data["dumpunet"]
        version = head["version"]
        files = {str(e["file"]): dict(e) for e in data["files"]} if head["kind"] == MANIFEST_KIND else None
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if files is None:
        raise OutputError(f"{path} exists but is not a dumpunet manifest; choose another output folder")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise OutputError(
            f"{path} has manifest version {version}, newer than this dumpunet writes "
            f"(version {MANIFEST_VERSION}); choose another output folder"
        )
    return files


class Manifest:
    """The entries of one output folder's ``manifest.json``, merged with what is on disk at each write.

    Examples
    --------
    >>> import tempfile
    >>> m = Manifest(Path(tempfile.mkdtemp()))
    >>> m.add({"file": "b.png", "step": 2}); m.add({"file": "a.png", "step": 1})
    >>> [e["file"] for e in m.entries]
    ['a.png', 'b.png']
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self._old = _read_manifest(self.path)
        self._new: dict[str, dict[str, Any]] = {}
        self._pending = 0
        self._written_at: float | None = None
        self._mutex = threading.RLock()

    def add(self, entry: Mapping[str, Any]) -> None:
        with self._mutex:
            self._new[str(entry["file"])] = dict(entry)
            self._pending += 1

    def extend(self, entries: Iterable[Mapping[str, Any]]) -> None:
        for e in entries:
            self.add(e)

    @property
    def pending(self) -> int:
        """How many files were noted since the manifest was last written."""
        return self._pending

    @property
    def added(self) -> int:
        """How many files this manifest has noted (not counting what was on disk)."""
        return len(self._new)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every entry, old and new, sorted by file name."""
        merged = {**self._old, **self._new}
        return [merged[k] for k in sorted(merged)]

    def due(self) -> bool:
        """Whether a batch is ready: the first file, :data:`FLUSH_FILES` files or :data:`FLUSH_SECONDS` since the last write."""
        return self._pending > 0 and (
            self._written_at is None or self._pending >= FLUSH_FILES
            or time.monotonic() - self._written_at >= FLUSH_SECONDS
        )

    def write(self) -> None:
        """Merge with the manifest on disk and write it atomically, under the folder's lock.

        Nothing is written if nothing was added since the last write.
        """
        with self._mutex:
            if not self._pending:
                return
            try:
                with folder_lock(self.folder):
                    self._old = _read_manifest(self.path)
                    doc = {
                        "dumpunet": {"kind": MANIFEST_KIND, "version": MANIFEST_VERSION,
                                     "writer": f"dumpunet {__version__}"},
                        "files": self.entries,
                    }
                    write_atomic(self.path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
            except OutputError:
                raise
            except OSError as exc:
                raise OutputError(f"cannot write {self.path}: {os_error_advice(exc)}") from None
            self._pending = 0
            self._written_at = time.monotonic()


class OutputFolder:
    """The one lifecycle of an output folder: check, create, write atomically, manifest in batches.

    Make it before the work (it checks the path and reads the manifest already there), enter it
    when the first file is ready, :meth:`write` each file; the merged ``manifest.json`` is
    written in batches and on leaving, listing exactly the files completed, whether the body
    finished, failed or was interrupted. :meth:`write` may be called from several threads at once.

    Examples
    --------
    >>> import tempfile
    >>> out = OutputFolder(Path(tempfile.mkdtemp()) / "renders")
    >>> with out:
    ...     f = out.write("a.txt", b"hi", {"kind": "note"})
    >>> f.params, sorted(p.name for p in out.path.iterdir())
    ({'file': 'a.txt', 'kind': 'note'}, ['a.txt', 'manifest.json'])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = check_folder(path)
        self.manifest = Manifest(self.path)

    def __enter__(self) -> OutputFolder:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with folder_lock(self.path):
                for stale in stale_temp_files(self.path):
                    stale.unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {self.path}: {os_error_advice(exc)}") from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self._write_manifest()
        except OutputError:
            if exc_type is None:
                raise  # else the body's error says what went wrong first

    def write(self, name: str, content: bytes | Callable[[IO[bytes]], None], entry: Mapping[str, Any]) -> WrittenFile:
        """Write ``content`` to ``name`` atomically, then note ``{"file": name, **entry}`` in the manifest."""
        path = output_path(self.path, name)
        if name == MANIFEST:
            raise OutputError(f"refusing to write a file named {MANIFEST} over the manifest of {self.path}")
        try:
            write_atomic(path, content)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {os_error_advice(exc)}{self._kept()}") from None
        params = {"file": name, **entry}
        self.manifest.add(params)
        if self.manifest.due():
            self._write_manifest()
        return WrittenFile(path, params)

    def _write_manifest(self) -> None:
        try:
            self.manifest.write()
        except OutputError as exc:
            n = self.manifest.pending
            if not n:
                raise
            raise OutputError(f"{exc} ({n} file{'s' if n != 1 else ''} written since it was last updated "
                              f"{'are' if n != 1 else 'is'} not listed in it)") from None

    def _kept(self) -> str:
        """What became of the files written before a failed one: listed in the manifest, if it can be written."""
        n = self.manifest.added
        if not n:
            return ""
        try:
            self.manifest.write()
        except OutputError:
            n = self.manifest.pending
            return f" ({MANIFEST} could not be updated either: {n} file{'s' if n != 1 else ''} written are not listed in it)"
        return f" ({n} file{'s' if n != 1 else ''} written before it {'are' if n != 1 else 'is'} listed in {MANIFEST})"

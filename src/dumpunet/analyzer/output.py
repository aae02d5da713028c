"""Where rendered and exported files go: one output folder, atomic writes, a ``manifest.json``.

Every command that writes files (render, export, attention, heatmap, diff, the sweep's contact
sheets) goes through one :class:`OutputFolder`: made before any work starts, it refuses a path
that is a file and a folder holding a foreign or newer manifest, so a mistake writes nothing;
entered, it creates the folder; :meth:`OutputFolder.write` writes each file atomically and
notes its manifest entry; leaving writes ``manifest.json``, also after a failure or Ctrl-C.

Every file is written under a temporary name in its own folder and moved into place with
:func:`os.replace`, so a reader (or a crash, or Ctrl-C) never sees a half-written PNG, array
or manifest: a file either is complete or is not there. Temporary names start with ``.`` and
end with ``.tmp``; a writer that fails removes its own.

The manifest lists every file of the folder with the parameters that made it, one JSON object
per file, sorted by file name. Writing merges with the manifest already there (an entry of the
same file name is replaced), so several renders into one folder accumulate. It is written last,
and also after a failure or Ctrl-C, listing exactly the files that were completed.

``manifest.json``::

    {"dumpunet": {"kind": "dumpunet-manifest", "version": 1, "writer": "dumpunet 0.1.0"},
     "files": [{"file": "OUT11-step020-img0-cond-custom-hsl-auto01-4079ce.png",
                "kind": "render", "block": "OUT11", "step": 20, ...}, ...]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dumpunet._version import __version__
from dumpunet.errors import OutputError
from dumpunet.files import write_atomic

__all__ = ["MANIFEST", "Manifest", "OutputFolder", "WrittenFile", "check_folder", "write_atomic"]

MANIFEST = "manifest.json"
MANIFEST_KIND = "dumpunet-manifest"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class WrittenFile(os.PathLike):
    """One written file: its path (``os.fspath`` works, so ``Image.open(f)`` does) and manifest entry."""

    path: Path
    params: dict[str, Any]

    def __fspath__(self) -> str:
        return str(self.path)


def check_folder(path: str | os.PathLike[str]) -> Path:
    """Refuse an output folder path that is a file (before anything is computed or created)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} is a file; choose a folder for --out")
    return folder


class Manifest:
    """The entries of one output folder's ``manifest.json``, merged with what is already there.

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
        self._old = self._read()
        self._new: dict[str, dict[str, Any]] = {}

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            head = data["dumpunet"]
            version = head["version"]
            files = {str(e["file"]): dict(e) for e in data["files"]} if head["kind"] == MANIFEST_KIND else None
        except (OSError, ValueError, KeyError, TypeError):
            files = None
        if files is None:
            raise OutputError(f"{self.path} exists but is not a dumpunet manifest; choose another output folder")
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise OutputError(
                f"{self.path} has manifest version {version}, newer than this dumpunet writes "
                f"(version {MANIFEST_VERSION}); choose another output folder"
            )
        return files

    def add(self, entry: Mapping[str, Any]) -> None:
        self._new[str(entry["file"])] = dict(entry)

    def extend(self, entries: Iterable[Mapping[str, Any]]) -> None:
        for e in entries:
            self.add(e)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every entry, old and new, sorted by file name."""
        merged = {**self._old, **self._new}
        return [merged[k] for k in sorted(merged)]

    def write(self) -> None:
        """Write the merged manifest atomically (nothing is written if nothing was added)."""
        if not self._new:
            return
        doc = {
            "dumpunet": {"kind": MANIFEST_KIND, "version": MANIFEST_VERSION, "writer": f"dumpunet {__version__}"},
            "files": self.entries,
        }
        write_atomic(self.path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())


class OutputFolder:
    """The one lifecycle of an output folder: check, create, write atomically, manifest last.

    Make it before the work (it checks the path and reads the manifest already there), enter it
    when the first file is ready, :meth:`write` each file; leaving writes the merged
    ``manifest.json`` listing exactly the files completed, whether the body finished, failed
    or was interrupted. :meth:`write` may be called from several threads at once.

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
        except OSError as exc:
            raise OutputError(f"cannot create output folder {self.path}: {exc.strerror or exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.manifest.write()

    def write(self, name: str, content: bytes | Callable[[IO[bytes]], None], entry: Mapping[str, Any]) -> WrittenFile:
        """Write ``content`` to ``name`` atomically, then note ``{"file": name, **entry}`` in the manifest."""
        path = self.path / name
        write_atomic(path, content)
        params = {"file": name, **entry}
        self.manifest.add(params)
        return WrittenFile(path, params)

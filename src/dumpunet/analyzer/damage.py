"""Damaged chunks met while writing maps: stop with the error, or skip the map (``--skip-damaged``).

A chunk that is missing or damaged raises :class:`~dumpunet.errors.DamagedChunkError` naming
the array, call, step, image and guidance half (:meth:`~dumpunet.store.reader.Run.read_slab`).
By default that ends render, export and diff with that one line. With ``skip_damaged`` every
read of a map (one block, step, image and guidance half: a :class:`~.selection.Slab`) goes
through one :class:`Damage`, which notes the map, prints one warning line for it on stderr,
and lets the writer skip the map's file(s); at the end :meth:`Damage.report` prints how many
maps were skipped. Skipped files are never written, so the manifest lists only files written.

Examples
--------
>>> from dumpunet.errors import DamagedChunkError
>>> from dumpunet.analyzer.selection import Slab
>>> slab = Slab("OUT11", "output", 2, 1, 500.0, 0, "cond", 1)
>>> def damaged():
...     raise DamagedChunkError("runs/main/blocks/OUT11/output: call 1 (step 2), image 0, cond: chunk missing")
>>> lines = []
>>> d = Damage(skip=True, warn=lines.append)
>>> d.attempt(slab, damaged) is None, d.attempt(slab, damaged) is None, d.attempt(slab, lambda: 7)
(True, True, 7)
>>> print(*lines, sep="\\n")
warning: skipped OUT11-step002-img0-cond: runs/main/blocks/OUT11/output: call 1 (step 2), image 0, cond: chunk missing
>>> d.report(); lines[-1]
'1 map skipped: damaged chunks'
>>> Damage(skip=False).attempt(slab, damaged)
Traceback (most recent call last):
...
dumpunet.errors.DamagedChunkError: runs/main/blocks/OUT11/output: call 1 (step 2), image 0, cond: chunk missing
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from dumpunet.analyzer.selection import Slab
from dumpunet.errors import DamagedChunkError, OptionError

__all__ = ["Damage"]

R = TypeVar("R")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Damage:
    """What to do with a map whose chunk is damaged: raise (``skip=False``) or skip it with a warning.

    :meth:`attempt` may be called from several threads at once; a map read twice (an Auto
    first pass, then the drawing) is warned about and counted once.
    """

    def __init__(self, skip: bool = False, *, warn: Callable[[str], None] = _stderr) -> None:
        if not isinstance(skip, bool):
            raise OptionError(f"skip_damaged must be True or False, got {skip!r}")
        self.skip = skip
        self._warn = warn
        self._skipped: dict[tuple[str, str, int, int, str], str] = {}
        self._lock = threading.Lock()

    def attempt(self, slab: Slab, read: Callable[[], R]) -> R | None:
        """``read()``; if it meets a damaged chunk: re-raise, or (skipping) note ``slab`` and return None."""
        try:
            return read()
        except DamagedChunkError as exc:
            if not self.skip:
                raise
            key = (slab.block, slab.which, slab.step, slab.image, slab.guidance)
            with self._lock:
                if key not in self._skipped:
                    self._skipped[key] = str(exc)
                    self._warn(f"warning: skipped {slab.name}: {exc}")
            return None

    def skipped(self, slab: Slab) -> bool:
        """Whether ``slab``'s map was skipped already."""
        return (slab.block, slab.which, slab.step, slab.image, slab.guidance) in self._skipped

    @property
    def count(self) -> int:
        """How many maps were skipped."""
        return len(self._skipped)

    def report(self) -> None:
        """Print how many maps were skipped, if any."""
        if self._skipped:
            n = len(self._skipped)
            self._warn(f"{n} map{'s' if n != 1 else ''} skipped: damaged chunks")

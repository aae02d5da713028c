"""How a channel grid is laid out besides its colours: the :class:`GridStyle` value.

Like :class:`~dumpunet.analyzer.pick.Pick` and :class:`~dumpunet.analyzer.color.spec.ColorSpec`,
each field is also the command-line option of the same name (:mod:`dumpunet.options`).

Examples
--------
>>> GridStyle(average="2-norm", scale=2)
GridStyle(scale=2, average='2-norm', pca_basis=None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dumpunet.errors import OptionError
from dumpunet.options import option

__all__ = ["AVERAGES", "MAX_SCALE", "GridStyle", "check_scale"]

MAX_SCALE = 64
"""Largest tile enlargement (a 64x64 map becomes 4096x4096 pixels a tile)."""


def check_scale(scale: object) -> int:
    """Return ``scale`` if it is a whole number in 1..:data:`MAX_SCALE`; else an :class:`OptionError`."""
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise OptionError(f"scale must be a whole number from 1 to {MAX_SCALE}, got {scale!r}")
    return scale

AVERAGES = ("mean", "1-norm", "2-norm", "l1", "l2")
"""Channel averages (:func:`~dumpunet.analyzer.reduce.channel_average` computes them)."""


@dataclass(frozen=True)
class GridStyle:
    """Tile scale, channel average and PCA basis file of render and diff grids."""

    scale: int = field(default=1, metadata=option("Enlarge each tile N times (nearest neighbour).", type=int, minimum=1,
        maximum=MAX_SCALE))
    average: str | None = field(default=None, metadata=option(
        "One channel-averaged map per block instead of the grid (1-norm, 2-norm: divided by the channel count, "
        "as in the original; l1, l2: not).", choices=AVERAGES, case_sensitive=False))
    pca_basis: Path | None = field(default=None, metadata=option(
        "PCA basis file (.npz): reused if it exists (blocks it lacks are fitted and added), else fitted here "
        "and saved, so other renders and stores share its colours.", type=Path))

    def __post_init__(self) -> None:
        check_scale(self.scale)
        if self.average is not None and self.average not in AVERAGES:
            raise OptionError(f"unknown channel average {self.average!r} (valid: {', '.join(AVERAGES)})")
        if self.pca_basis is not None:
            object.__setattr__(self, "pca_basis", Path(self.pca_basis))

    def check(self, pick, color) -> GridStyle:  # noqa: ANN001 - Pick, ColorSpec (kept light to import)
        """Refuse what cannot go together with this pick and colorization; return self."""
        if color.pca and self.average is not None:
            raise OptionError("method pca colours the channel vectors; it cannot be combined with an average")
        if color.pca and pick.channels.strip():
            raise OptionError("method pca uses every channel (the basis spans them all); leave channels empty")
        if self.pca_basis is not None and not color.pca:
            raise OptionError("a PCA basis file needs method pca")
        return self

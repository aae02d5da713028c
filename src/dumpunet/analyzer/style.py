"""How a channel grid is laid out besides its colours: the :class:`GridStyle` value.

Like :class:`~dumpunet.analyzer.pick.Pick` and :class:`~dumpunet.analyzer.color.spec.ColorSpec`,
each field is also the command-line option of the same name (:mod:`dumpunet.options`).

Examples
--------
>>> GridStyle(average="2-norm", scale=2)
GridStyle(scale=2, average='2-norm', with_grid=False, pca_basis=None)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from dumpunet.errors import OptionError
from dumpunet.options import option

__all__ = ["AVERAGES", "GridStyle"]

AVERAGES = ("mean", "1-norm", "2-norm", "l1", "l2")
"""Channel averages (:func:`~dumpunet.analyzer.reduce.channel_average` computes them)."""


@dataclass(frozen=True)
class GridStyle:
    """Tile scale, channel average and PCA basis file of render and diff grids."""

    scale: int = field(default=1, metadata=option("Enlarge each tile N times (nearest neighbour).", type=int, minimum=1))
    average: str | None = field(default=None, metadata=option(
        "One channel-averaged map per block instead of the grid (1-norm, 2-norm: divided by the channel count, "
        "as in the original; l1, l2: not).", choices=AVERAGES, case_sensitive=False))
    with_grid: bool = field(default=False, metadata=option(
        "With --average: write the channel grid too, beside the averaged map (the original showed both).",
        type=bool, flag_value=True))
    pca_basis: Path | None = field(default=None, metadata=option(
        "PCA basis file (.npz): reused if it exists (blocks it lacks are fitted and added), else fitted here "
        "and saved, so other renders and stores share its colours.", type=Path))

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise OptionError(f"scale must be a whole number of at least 1, got {self.scale!r}")
        if self.average is not None and self.average not in AVERAGES:
            raise OptionError(f"unknown channel average {self.average!r} (valid: {', '.join(AVERAGES)})")
        if not isinstance(self.with_grid, bool):
            raise OptionError(f"with_grid must be True or False, got {self.with_grid!r}")
        if self.with_grid and self.average is None:
            raise OptionError("with_grid writes the channel grid beside the averaged map: it needs an average")
        if self.pca_basis is not None:
            object.__setattr__(self, "pca_basis", Path(self.pca_basis))

    def drawn(self) -> tuple[GridStyle, ...]:
        """The styles each grid is drawn in: this one, and with ``with_grid`` the plain channel grid after it.

        >>> [s.average for s in GridStyle(average="mean", with_grid=True).drawn()]
        ['mean', None]
        """
        if self.with_grid:
            return (self, replace(self, average=None, with_grid=False))
        return (self,)

    def check(self, pick, color) -> GridStyle:  # noqa: ANN001 - Pick, ColorSpec (kept light to import)
        """Refuse what cannot go together with this pick and colorization; return self."""
        if color.pca and self.average is not None:
            raise OptionError("method pca colours the channel vectors; it cannot be combined with an average")
        if color.pca and pick.channels.strip():
            raise OptionError("method pca uses every channel (the basis spans them all); leave channels empty")
        if self.pca_basis is not None and not color.pca:
            raise OptionError("a PCA basis file needs method pca")
        return self

"""How a channel grid is laid out besides its colours: the :class:`GridStyle` value.

Like :class:`~dumpunet.analyzer.pick.Pick` and :class:`~dumpunet.analyzer.color.spec.ColorSpec`,
each field is also the command-line option of the same name (:mod:`dumpunet.options`).

Examples
--------
>>> GridStyle(average="2-norm", scale=2)
GridStyle(scale=2, average='2-norm', with_grid=False, pca_basis=None, plain=False)
>>> GridStyle().tile_scale(8, 8), GridStyle(plain=True).tile_scale(8, 8), GridStyle(scale=3).tile_scale(8, 8)
(8, 1, 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from dumpunet.errors import OptionError
from dumpunet.options import option

__all__ = ["ATTENTION_TILE_TARGET", "AVERAGES", "MAX_SCALE", "TILE_TARGET", "GridStyle", "attention_scale", "check_scale"]

MAX_SCALE = 64
"""Largest tile enlargement (a 64x64 map becomes 4096x4096 pixels a tile)."""


def check_scale(scale: object) -> int:
    """Return ``scale`` if it is a whole number in 1..:data:`MAX_SCALE`; else an :class:`OptionError`."""
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= MAX_SCALE:
        raise OptionError(f"scale must be a whole number from 1 to {MAX_SCALE}, got {scale!r}")
    return scale


AVERAGES = ("mean", "1-norm", "2-norm", "l1", "l2")
"""Channel averages (:func:`~dumpunet.analyzer.reduce.channel_average` computes them)."""

TILE_TARGET = 64
"""Without ``scale``, labelled grids enlarge tiles to at least this many pixels on a side."""
ATTENTION_TILE_TARGET = 32
"""The same for attention grids (:mod:`~dumpunet.analyzer.attention_grids`) and labelled heatmaps."""


def attention_scale(h: int, w: int, scale: int | None = None) -> int:
    """How many times an attention map (a grid's tile, a labelled heatmap) is enlarged: ``scale``, or enough
    for :data:`ATTENTION_TILE_TARGET` pixels on a side (at most 16).

    >>> attention_scale(8, 8), attention_scale(64, 64), attention_scale(1, 1), attention_scale(8, 8, 3)
    (4, 1, 16, 3)
    """
    return scale or max(1, min(16, math.ceil(ATTENTION_TILE_TARGET / max(1, min(h, w)))))


@dataclass(frozen=True)
class GridStyle:
    """Tile scale, channel average, PCA basis file and labels of render and diff grids.

    By default a grid is labelled (:mod:`~dumpunet.analyzer.grid_labels`: a title strip, channel
    numbers on the tiles, a colour bar) and small maps are enlarged to tiles of at least
    :data:`TILE_TARGET` pixels; ``plain`` gives the bare tiles at scale 1, as the original drew them.
    An explicit ``scale`` is used as given in both.
    """

    scale: int | None = field(default=None, metadata=option(
        f"Enlarge each tile N times (nearest neighbour); default: enough for tiles of at least {TILE_TARGET} "
        f"pixels on a side (render, diff; 1 with --plain) or {ATTENTION_TILE_TARGET} (attention).", type=int, minimum=1,
        maximum=MAX_SCALE))
    average: str | None = field(default=None, metadata=option(
        "One channel-averaged map per block instead of the grid (1-norm, 2-norm: divided by the channel count, "
        "as in the original; l1, l2: not).", choices=AVERAGES, case_sensitive=False))
    with_grid: bool = field(default=False, metadata=option(
        "With --average: write the channel grid too, beside the averaged map (the original showed both).",
        type=bool, flag_value=True))
    pca_basis: Path | None = field(default=None, metadata=option(
        "PCA basis file (.npz): reused if it exists (blocks it lacks are fitted and added), else fitted here "
        "and saved, so other renders and stores share its colours.", type=Path))
    plain: bool = field(default=False, metadata=option(
        "Bare tiles as the original drew them: no title, channel numbers or colour bar, and scale 1 unless "
        "--scale is given.", type=bool, flag_value=True))

    def __post_init__(self) -> None:
        if self.scale is not None:
            check_scale(self.scale)
        if not isinstance(self.plain, bool):
            raise OptionError(f"plain must be True or False, got {self.plain!r}")
        if self.average is not None and self.average not in AVERAGES:
            raise OptionError(f"unknown channel average {self.average!r} (valid: {', '.join(AVERAGES)})")
        if not isinstance(self.with_grid, bool):
            raise OptionError(f"with_grid must be True or False, got {self.with_grid!r}")
        if self.with_grid and self.average is None:
            raise OptionError("with_grid writes the channel grid beside the averaged map: it needs an average")
        if self.pca_basis is not None:
            object.__setattr__(self, "pca_basis", Path(self.pca_basis))

    def tile_scale(self, h: int, w: int) -> int:
        """How many times tiles of ``h x w`` are enlarged: ``scale`` if given, else 1 (plain) or
        enough for :data:`TILE_TARGET` pixels on the shorter side."""
        if self.scale is not None:
            return self.scale
        if self.plain:
            return 1
        return max(1, math.ceil(TILE_TARGET / max(1, min(h, w))))

    def drawn(self) -> tuple[GridStyle, ...]:
        """The styles each grid is drawn in: this one, and with ``with_grid`` the channel grid (no average) after it.

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

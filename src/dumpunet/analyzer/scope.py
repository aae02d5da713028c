"""Which maps share one Auto (min, max): the one planner behind render, diff and attention.

The Auto transforms normalize by a minimum and maximum taken over ``ColorSpec.auto_scope``:

===========  ========================================================================
``channel``  each tile its own range (the original's behaviour; :func:`colorize` does it)
``head``     one range per grid row: attention's heads x tokens grids compare the tokens of a
             head (attention's default; render and diff refuse it, their rows mean nothing)
``block``    one range over all (selected) tiles of the grid
``step``     one range over every selected grid of the step, per image and guidance half
``run``      one range over everything selected (a first pass reads it all)
===========  ========================================================================

A view makes one :class:`AutoRanges` per selection, feeds it every grid's maps in a first pass
when :attr:`~AutoRanges.first_pass` says so (:meth:`~AutoRanges.add`), then asks
:meth:`~AutoRanges.minmax` for each grid's range as it draws it.

Examples
--------
>>> from dumpunet.analyzer.color.spec import ColorSpec
>>> ranges = AutoRanges(ColorSpec(auto_scope="run"))
>>> ranges.add(np.array([[[0.0, 2.0]]], np.float32), step=1, image=0, guidance="cond")
>>> ranges.add(np.array([[[-1.0, 1.0]]], np.float32), step=1, image=0, guidance="uncond")
>>> ranges.minmax(np.zeros((1, 1, 1), np.float32), step=1, image=0, guidance="cond")
(-1.0, 2.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dumpunet.analyzer.color.colorize import map_ranges, merge_ranges
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.errors import OptionError

__all__ = ["AutoRanges", "json_range", "row_ranges"]


class AutoRanges:
    """The Auto ranges of one selection under one colorization (see the module)."""

    def __init__(self, color: ColorSpec, *, rows: bool = False) -> None:
        """``rows``: the view's grid rows are heads, so scope ``head`` applies (attention)."""
        self.scope = color.scope  # "none" without an Auto transform
        if self.scope == "head" and not rows:
            raise OptionError("auto scope 'head' (one range per head row) applies to attention grids only; "
                              "valid here: channel, block, step, run")
        self._ranges: dict[tuple[Any, ...], tuple[float, float]] = {}

    @property
    def first_pass(self) -> bool:
        """Whether every grid's maps must be seen (:meth:`add`) before the first is drawn."""
        return self.scope in ("step", "run")

    @property
    def per_row(self) -> bool:
        """Whether each grid row has its own range (:meth:`row_ranges`, which the manifest records)."""
        return self.scope == "head"

    @property
    def shared(self) -> bool:
        """Whether a grid's tiles share one range (which the manifest records)."""
        return self.scope in ("block", "step", "run")

    def _key(self, step: int, image: int, guidance: str) -> tuple[Any, ...]:
        return (step, image, guidance) if self.scope == "step" else ()

    def add(self, maps: np.ndarray, *, step: int, image: int, guidance: str) -> None:
        """First pass: widen the range of the grid's group by its maps ``[N, H, W]``."""
        key = self._key(step, image, guidance)
        self._ranges[key] = merge_ranges(self._ranges.get(key, (math.nan, math.nan)), map_ranges(maps))

    def planned(self, *, step: int, image: int, guidance: str) -> tuple[float, float] | None:
        """The range the first pass found for a grid of this group; None without a first pass."""
        return self._ranges[self._key(step, image, guidance)] if self.first_pass else None

    def minmax(self, maps: np.ndarray, *, step: int, image: int, guidance: str,
               rows: int = 1) -> tuple[float, float] | np.ndarray | None:
        """The range to colour the grid's ``maps`` with; None: each tile its own (or no Auto).

        Scope ``head``: an ``[N, 2]`` array, every tile the range of its row (``rows`` rows).
        """
        if self.scope == "head":
            return np.repeat(row_ranges(maps, rows), len(maps) // rows, axis=0)
        if self.scope == "block":
            return merge_ranges(map_ranges(maps))
        return self.planned(step=step, image=image, guidance=guidance)


def row_ranges(maps: np.ndarray, rows: int) -> np.ndarray:
    """One ``(min, max)`` per grid row of ``maps`` ``[rows*cols, H, W]`` (row-major): ``[rows, 2]``.

    >>> row_ranges(np.array([[[0.0]], [[2.0]], [[5.0]], [[1.0]]], np.float32), 2)
    array([[0., 2.],
           [1., 5.]])
    """
    per_tile = map_ranges(maps).reshape(rows, -1, 2)
    return np.array([merge_ranges(r) for r in per_tile], np.float64).reshape(rows, 2)


def json_range(rng: tuple[float, float]) -> list[float] | None:
    """A range as the manifest writes it: ``[min, max]``, or None where no value was finite."""
    return None if math.isnan(rng[0]) else [float(rng[0]), float(rng[1])]

"""A view as a value you can hold: pixels, the CLI command that writes them, notebook display.

:func:`render_view` draws a resolved :class:`~dumpunet.viewer.state.ViewState`;
:func:`view_image` is the notebook entry point: it returns a :class:`Rendered`, which a
Jupyter cell shows inline (``_repr_png_``) and which converts to Pillow or saves as PNG.

Examples
--------
>>> pic = view_image("girl.zarr", block="OUT11", step=20, method="Red/Blue")  # doctest: +SKIP
>>> pic.save("out11.png"); pic.to_pil().size  # doctest: +SKIP
(65, 65)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dumpunet.store import Store, open_store
from dumpunet.viewer.state import ViewState
from dumpunet.viewer.structure import resolve

__all__ = ["Rendered", "command_for", "grid_layout", "render_view", "view_image"]


def render_view(store: Store, state: ViewState, minus: Store | None = None) -> np.ndarray:
    """The pixels of a resolved view: uint8 ``[H, W]`` (White/Black grids) or ``[H, W, 3]``.

    ``minus``: the store that ``state.minus`` names, subtracted from ``store``.
    """
    from dumpunet.viewer.adapter import draw

    return draw(store, state, minus)


def grid_layout(store: Store, state: ViewState) -> tuple[int, int, int, int] | None:
    """``(cols, rows, tile height, tile width)`` of a full channel grid, so the page maps clicks to channels."""
    from dumpunet.viewer.adapter import grid_layout as layout

    return layout(store, state)


def command_for(store: Store, state: ViewState, minus: Store | None = None) -> str | None:
    """The ``dumpunet`` command line that writes the picture of a resolved view (None: none does).

    ``minus``: the store that ``state.minus`` names (the difference of two stores).
    """
    from dumpunet.viewer.adapter import heatmap_steps

    steps = heatmap_steps(store, state) if state.view in ("heatmap", "query", "summary") else None
    return state.command(str(store.path), minus=str(minus.path) if minus is not None else None, steps=steps)


@dataclass(frozen=True)
class Rendered:
    """An image in memory: shows inline in Jupyter; ``to_pil()``, ``save(path)``, ``pixels``."""

    pixels: np.ndarray
    state: ViewState | None = None
    command: str | None = None

    def to_pil(self):
        from PIL import Image

        return Image.fromarray(self.pixels)

    def png(self) -> bytes:
        from dumpunet.analyzer.png import encode_png

        return encode_png(self.pixels)

    def _repr_png_(self) -> bytes:
        return self.png()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the image as PNG and return the path."""
        path = Path(path)
        path.write_bytes(self.png())
        return path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


def view_image(store: Store | str | os.PathLike[str], **state: Any) -> Rendered:
    """Draw one view (the fields of :class:`~dumpunet.viewer.state.ViewState`) as a :class:`Rendered`."""
    st = store if isinstance(store, Store) else open_store(store)
    resolved = resolve(st, ViewState(**state))
    return Rendered(render_view(st, resolved), resolved, command_for(st, resolved))

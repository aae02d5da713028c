"""Contact sheets of a sweep: the base image and every pair's layered image, side by side.

A sweep store (``dumpunet sweep``) holds a base run and one run per block with the inserted
text in that block only. For each image of the batch, ``sweep-img{i}.png`` lays out the base
run's final image first (caption ``base``), then each pair's layered final image in the store's
pair order (caption: the pair label, i.e. the block name), row by row in a near-square grid.

Each cell is a caption band (white text on black, :mod:`.labels`) above the image; cells are
:data:`GAP` pixels apart on black, with no outer border. A cell is as large as the largest
image (smaller ones sit at its top left). A pair whose layered run never finished gets an empty
(black) cell captioned ``<label> (unfinished)``. Several base runs (``sweep --prompts`` into one
store: ``p0000-base``, ``p0001-base``, ...) each get a cell, captioned ``base (<run>)``; a pick's
``run`` names one base run and lays out its sweep alone, each cell captioned with its label less
the prompt's prefix (``p0001-IN04`` reads ``IN04``).

Files are written atomically and listed in ``manifest.json``.

Examples
--------
>>> contact_sheet("sweep.zarr", out="sheet")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from dumpunet.analyzer.labels import paste, text_image
from dumpunet.analyzer.output import OutputFolder, WrittenFile
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.png import encode_png, resolve_encoder
from dumpunet.errors import SelectionError
from dumpunet.specs import parse_ints
from dumpunet.store import Run, Store, open_store

__all__ = ["GAP", "contact_sheet", "sheet_shape"]

GAP = 4


@dataclass(frozen=True)
class _Cell:
    run: str | None  # None: a run that never finished
    caption: str


def sheet_shape(n: int, cell_h: int, cell_w: int, gap: int = GAP) -> tuple[int, int]:
    """Return ``(cols, rows)`` holding ``n`` cells whose sheet is most nearly square.

    Among column counts whose last row is not empty, the one minimizing ``|width - height|``
    wins (on a tie the wider sheet); then the fewest columns that fill its rows are kept, so
    no column stays empty.

    >>> sheet_shape(26, 527, 512), sheet_shape(4, 20, 8), sheet_shape(3, 5, 5), sheet_shape(1, 5, 5)
    ((6, 5), (2, 2), (2, 2), (1, 1))
    """
    best, best_key = (1, n), None
    for cols in range(1, n + 1):
        rows = math.ceil(n / cols)
        if (rows - 1) * cols >= n:
            continue
        width, height = cols * (cell_w + gap) - gap, rows * (cell_h + gap) - gap
        key = (abs(width - height), -width)
        if best_key is None or key < best_key:
            best, best_key = (cols, rows), key
    rows = best[1]
    return math.ceil(n / rows), rows


def _cells(store: Store, base: str | None = None) -> list[_Cell]:
    pairs = store.pairs
    if not pairs:
        raise SelectionError(f"{store.path} holds no paired runs (record with --pair, or dumpunet sweep)")
    bases = list(dict.fromkeys(p.base for p in pairs))
    prefix = ""
    if base is not None:
        if base not in bases:
            raise SelectionError(f"{store.path} holds no sweep of base run {base!r} (base runs: {', '.join(bases)})")
        pairs, bases = tuple(p for p in pairs if p.base == base), [base]
        prefix = base.removesuffix("base") if base.endswith("-base") else ""
    cells = [_Cell(b, "base" if len(bases) == 1 else f"base ({b})") for b in bases]
    for p in pairs:
        done = p.layered in store.run_names and store.run(p.layered).complete
        label = p.label.removeprefix(prefix) if prefix and p.label != prefix else p.label
        cells.append(_Cell(p.layered if done else None, label if done else f"{label} (unfinished)"))
    return cells


def contact_sheet(
    store: Store | str | os.PathLike[str],
    pick: Pick = Pick(),
    *,
    out: str | os.PathLike[str],
    png_encoder: str | None = None,
) -> list[WrittenFile]:
    """Write one labelled contact sheet per image of a sweep (or any paired) store; return the files.

    The sheets show final images: of ``pick`` only ``images`` applies, and ``run``, which names
    the base run of one sweep in a store of several (``sweep --prompts``: ``p0001-base``).

    Examples
    --------
    >>> files = contact_sheet("sweep.zarr", out="sheet")  # doctest: +SKIP
    >>> [f.path.name for f in files]  # doctest: +SKIP
    ['sweep-img0.png']
    """
    pick.refuse("a contact sheet", "blocks", "steps", "guidance", "channels", "which")
    st = store if isinstance(store, Store) else open_store(store)
    encoder = resolve_encoder(png_encoder)
    cells = _cells(st, pick.run)
    first: Run = st.run(cells[0].run)
    image_list = parse_ints(pick.images, 0, first.n_images - 1, noun="image", what="image spec")
    # Read every image first: a missing one fails before anything is written.
    pictures = {(c.run, i): st.run(c.run).image(i) for c in cells if c.run is not None for i in image_list}
    cell_h = max(p.shape[0] for p in pictures.values())
    cell_w = max(p.shape[1] for p in pictures.values())
    captions = [text_image(c.caption) for c in cells]
    band = max(g.shape[0] for g in captions)
    cols, rows = sheet_shape(len(cells), band + cell_h, cell_w)
    height, width = rows * (band + cell_h + GAP) - GAP, cols * (cell_w + GAP) - GAP
    output = OutputFolder(out)
    written: list[WrittenFile] = []
    with output:
        for i in image_list:
            sheet = np.zeros((height, width, 3), np.uint8)
            for k, (cell, glyphs) in enumerate(zip(cells, captions)):
                y, x = divmod(k, cols)
                y0, x0 = y * (band + cell_h + GAP), x * (cell_w + GAP)
                paste(sheet[y0 : y0 + band, x0 : x0 + cell_w], glyphs, 0, 0)
                if cell.run is not None:
                    p = pictures[(cell.run, i)]
                    sheet[y0 + band : y0 + band + p.shape[0], x0 : x0 + p.shape[1]] = p
            entry = {
                "kind": "sweep", "store": str(st.path.resolve()), "image": i,
                "cells": [{"run": c.run, "caption": c.caption} for c in cells],
                "grid": {"cols": cols, "rows": rows, "cell": [cell_h, cell_w], "caption": band, "gap": GAP},
                "size": [width, height],
            }
            written.append(output.write(f"sweep-img{i}.png", encode_png(sheet, encoder=encoder), entry))
    return written

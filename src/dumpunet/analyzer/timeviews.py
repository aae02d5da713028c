"""Views over time: one block's grids as an animation over steps, and a block x step mosaic.

Both draw the grids :func:`~dumpunet.analyzer.render.render` would write (same colorization,
Auto ranges, scale and labels, from the same plan: :func:`~dumpunet.analyzer.render_plan.plan_grids`)
and put them together instead of writing one file each:

``animate``  one file per block, image and guidance half: its grids over the selected steps as
             the frames of an animated PNG (``"png"``, lossless: each frame is the single-step
             render exactly) or GIF (``"gif"``: at most 256 colours a frame), ``frame_ms`` each,
             looping. Frames of different sizes (a title that wraps differently) are placed at
             the top left of the largest, on black. For colours that mean the same in every
             frame, use an Auto scope of ``run`` (or a Linear or Sigmoid transform).
``mosaic``   one file per image and guidance half: blocks as rows (U-Net order), steps as
             columns, each cell the block's bare grid at that step (``--average`` makes each
             one map; tiles enlarged to at least :data:`MOSAIC_TILE` pixels unless a scale is
             given), row labels the blocks, column headers the steps, under a title strip.

File names: the single-step name with ``-step020`` replaced by ``-steps1_5_10_20`` (animations)
or the block by ``mosaic`` (``mosaic-steps1-20-img0-cond-hsl-auto01.png``); the manifest entry is
the first grid's with the steps, and the frame count and ``frame_ms`` (animation) or each cell's
block, step and ``box`` (x, y, width, height in pixels; mosaic).

Examples
--------
>>> dumpunet.render("girl.zarr", Pick(blocks="OUT11"), ColorSpec(auto_scope="run"), out="anim",
...                 animate="png")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from itertools import islice
from typing import Any

import numpy as np
from PIL import Image

from dumpunet.analyzer import pca
from dumpunet.analyzer.color.spec import ColorSpec
from dumpunet.analyzer.damage import Damage
from dumpunet.analyzer.grid_labels import frame
from dumpunet.analyzer.labels import paste, text_image
from dumpunet.analyzer.output import WrittenFile, text_part
from dumpunet.analyzer.png import encode_png
from dumpunet.analyzer.render_plan import GridTask
from dumpunet.errors import OptionError
from dumpunet.specs import format_ints
from dumpunet.store.readahead import read_ahead

__all__ = ["ANIMATIONS", "FRAME_MS", "check_time_view", "encode_animation", "write_animations", "write_mosaics"]

ANIMATIONS = ("png", "gif")
FRAME_MS = 250
MOSAIC_TILE = 32
"""Without a given scale, a mosaic cell's tiles are enlarged to at least this many pixels a side."""
_GAP = 4


def check_time_view(animate: str | None, mosaic: bool, frame_ms: int) -> None:
    """Refuse what cannot go together (before any work)."""
    if animate is not None and animate not in ANIMATIONS:
        raise OptionError(f"unknown animation format {animate!r} (valid: {', '.join(ANIMATIONS)})")
    if animate is not None and mosaic:
        raise OptionError("animate and mosaic are two ways to show the steps: choose one")
    if isinstance(frame_ms, bool) or not isinstance(frame_ms, int) or not 10 <= frame_ms <= 60_000:
        raise OptionError(f"frame_ms must be a whole number of milliseconds from 10 to 60000, got {frame_ms!r}")


def _steps_label(steps: Sequence[int]) -> str:
    text = format_ints(steps).replace(",", "_")
    return text if len(text) <= 32 else text_part(text, limit=16)


def _draw(task: GridTask, color: ColorSpec, basis: pca.Basis | None, damage: Damage,
          cell: bool = False) -> np.ndarray | None:
    """The task's grid as RGB; ``cell``: bare, its tiles enlarged to :data:`MOSAIC_TILE` unless a scale is given."""
    from dumpunet.analyzer.render import draw_grid  # render imports this module

    t, slab = task.target, task.slab
    style = task.style
    if cell:
        h, w = t.sel.shape(slab.block)[1:]
        style = replace(style, plain=True, scale=style.scale or max(1, math.ceil(MOSAIC_TILE / max(1, min(h, w)))))
    drawn = damage.attempt(slab, lambda: draw_grid(t.sel, slab, color, style, t.ranges, basis))
    if drawn is None:
        return None
    image = drawn[0]
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


def _drawn(groups: Sequence[list[GridTask]], color: ColorSpec, basis: pca.Basis | None, damage: Damage,
           cell: bool = False) -> Iterator[list[tuple[GridTask, np.ndarray | None]]]:
    """Each group's tasks drawn (:func:`_draw`) in order, the chunks of the tasks after them read ahead."""
    ordered = [k for group in groups for k in group]
    with read_ahead(ordered, lambda k: k.target.sel.chunks(k.slab)) as stream:
        tasks = iter(stream)
        for group in groups:
            yield [(k, _draw(k, color, basis, damage, cell)) for k in islice(tasks, len(group))]


def _groups(tasks: Sequence[GridTask], key) -> dict[Any, list[GridTask]]:
    groups: dict[Any, list[GridTask]] = {}
    for task in tasks:
        groups.setdefault(key(task), []).append(task)
    return groups


def _pad(images: list[np.ndarray]) -> list[np.ndarray]:
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    out = []
    for img in images:
        canvas = np.zeros((h, w, 3), np.uint8)
        canvas[: img.shape[0], : img.shape[1]] = img
        out.append(canvas)
    return out


def encode_animation(frames: list[np.ndarray], fmt: str, frame_ms: int) -> bytes:
    """Frames (uint8 RGB, one size) as an animated PNG or GIF that loops."""
    if fmt not in ANIMATIONS:
        raise OptionError(f"unknown animation format {fmt!r} (valid: {', '.join(ANIMATIONS)})")
    pictures = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    pictures[0].save(buf, format=fmt.upper(), save_all=True, append_images=pictures[1:], duration=frame_ms,
                     loop=0)
    return buf.getvalue()


def write_animations(tasks: Sequence[GridTask], color: ColorSpec, basis: pca.Basis | None, *, fmt: str,
                     frame_ms: int = FRAME_MS, damage: Damage | None = None) -> list[WrittenFile]:
    """One animation over steps per (store, block, side, image, guidance half, drawing) of the planned grids."""
    damage = damage or Damage()
    written = []
    groups = _groups(tasks, lambda k: (id(k.target), k.slab.block, k.slab.which, k.slab.image, k.slab.guidance,
                                       k.style))
    for group in groups.values():
        group.sort(key=lambda k: k.slab.step)
    for group in _drawn(list(groups.values()), color, basis, damage):
        drawn = [(k, img) for k, img in group if img is not None]
        if not drawn:
            continue
        first = drawn[0][0]
        steps = [k.slab.step for k, _ in drawn]
        name = first.name.replace(f"-step{first.slab.step:03d}-", f"-steps{_steps_label(steps)}-", 1)
        name = name.removesuffix(".png") + "." + fmt
        entry = {k: v for k, v in first.entry.items() if k not in ("step", "call", "timestep", "range", "size")}
        frames = _pad([img for _, img in drawn])
        entry.update(kind=f"{entry['kind']}-animation", steps=steps, frames=len(frames), frame_ms=frame_ms,
                     format=fmt, size=[frames[0].shape[1], frames[0].shape[0]])
        written.append(first.target.output.write(name, encode_animation(frames, fmt, frame_ms), entry))
    return written


def write_mosaics(tasks: Sequence[GridTask], color: ColorSpec, basis: pca.Basis | None, *, encoder: str,
                  damage: Damage | None = None) -> list[WrittenFile]:
    """One block x step mosaic per (store, image, guidance half, drawing) of the planned grids."""
    damage = damage or Damage()
    written = []
    groups = _groups(tasks, lambda k: (id(k.target), k.slab.image, k.slab.guidance, k.style))
    for group in _drawn(list(groups.values()), color, basis, damage, cell=True):
        first = group[0][0]
        sel = first.target.sel
        cells = {(k.slab.block, k.slab.step): img for k, img in group}
        blocks = [b for b in sel.blocks if any(b == blk for blk, _ in cells)]
        steps = sorted({s for _, s in cells})
        row_h = {b: max(img.shape[0] for (blk, _), img in cells.items() if blk == b and img is not None)
                 for b in blocks if any(img is not None for (blk, _), img in cells.items() if blk == b)}
        blocks = [b for b in blocks if b in row_h]
        if not blocks:
            continue
        col_w = {s: max((img.shape[1] for (_, st), img in cells.items() if st == s and img is not None), default=0)
                 for s in steps}
        row_labels = {b: text_image(b) for b in blocks}
        col_labels = {s: text_image(f"step {s}") for s in steps}
        left = max(g.shape[1] for g in row_labels.values()) + _GAP
        head = max(g.shape[0] for g in col_labels.values()) + _GAP // 2
        widths = [max(col_w[s], col_labels[s].shape[1]) for s in steps]
        heights = [max(row_h[b], row_labels[b].shape[0]) for b in blocks]
        canvas = np.zeros((head + sum(heights) + _GAP * (len(blocks) - 1),
                           left + sum(widths) + _GAP * (len(steps) - 1), 3), np.uint8)
        xs = np.cumsum([left] + [w + _GAP for w in widths[:-1]])
        ys = np.cumsum([head] + [h + _GAP for h in heights[:-1]])
        for s, x in zip(steps, xs, strict=True):
            paste(canvas, col_labels[s], 0, int(x))
        boxes = []
        for b, y in zip(blocks, ys, strict=True):
            paste(canvas, row_labels[b], int(y), 0)
            for s, x in zip(steps, xs, strict=True):
                img = cells.get((b, s))
                if img is not None:
                    canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
                    boxes.append({"block": b, "step": s, "box": [int(x), int(y), img.shape[1], img.shape[0]]})
        title = [f"{sel.label} | run {sel.run.name} | image {first.slab.image} | {first.slab.guidance}",
                 f"blocks x steps | {color.words() if basis is None else 'PCA: top 3 principal components as RGB'}"]
        picture, top = (canvas, 0) if first.style.plain else frame(canvas, lines=title, bar=None)
        for box in boxes:
            box["box"][1] += top
        stem = sel.file_stem(first.slab)
        rest = first.name[len(stem):]
        name = f"{sel.prefix}mosaic-steps{_steps_label(steps)}-img{first.slab.image}-{first.slab.guidance}{rest}"
        entry = {k: v for k, v in first.entry.items()
                 if k not in ("block", "step", "call", "timestep", "range", "size", "grid", "channels")}
        entry.update(kind=f"{entry['kind']}-mosaic", blocks=blocks, steps=steps, cells=boxes,
                     size=[picture.shape[1], picture.shape[0]])
        written.append(first.target.output.write(name, encode_png(picture, encoder=encoder), entry))
    return written

"""What a render or an export reads: one run's blocks x steps x images x guidance halves x channels.

:func:`select` checks the whole selection against the store before anything is read or
written (unknown block, step not recorded or not completely written, image or channel out of
range), so a mistake fails at once with one readable error and leaves no files behind.
Each (block, step, image, guidance) is one :class:`Slab`: one ``[C, H, W]`` map of the store,
read as one chunk. Steps with several U-Net calls (Heun, DPM2, ...) contribute their first call,
as :meth:`dumpunet.store.Run.features` does by default.

Examples
--------
>>> sel = select(dumpunet.open("girl.zarr"), blocks="OUT11", steps="20")  # doctest: +SKIP
>>> [s.name for s in sel.slabs()]  # doctest: +SKIP
['OUT11-step020-img0-cond']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import zarr

from dumpunet.errors import SelectionError
from dumpunet.specs import format_ints, parse_ints
from dumpunet.store import Run, Store

__all__ = ["Selection", "Slab", "select"]

Guidance = Literal["cond", "uncond", "both"]
Which = Literal["output", "input"]
GUIDANCE_CHOICES = ("cond", "uncond", "both")
WHICH_CHOICES = ("output", "input")


@dataclass(frozen=True)
class Slab:
    """One block's map at one step, for one image and one guidance half."""

    block: str
    which: str
    step: int
    call: int
    timestep: float
    image: int
    guidance: str
    guidance_index: int

    @property
    def name(self) -> str:
        """``OUT11-step020-img0-cond``; ``OUT11-input-step020-...`` for block inputs."""
        part = f"{self.block}-input" if self.which == "input" else self.block
        return f"{part}-step{self.step:03d}-img{self.image}-{self.guidance}"

    def params(self) -> dict[str, object]:
        return {
            "block": self.block,
            "which": self.which,
            "step": self.step,
            "call": self.call,
            "timestep": self.timestep,
            "image": self.image,
            "guidance": self.guidance,
        }


@dataclass
class Selection:
    """A checked selection of one run; :meth:`read` returns the selected channels of a slab."""

    store: Store
    run: Run
    which: str
    blocks: list[str]
    steps: list[int]
    calls: dict[int, int]
    images: list[int]
    guidance: list[tuple[str, int]]
    channels: dict[str, list[int] | None]  # None: every channel
    arrays: dict[str, zarr.Array]

    @property
    def label(self) -> str:
        """The store's folder name without ``.zarr``: a run's name among several stores."""
        name = self.store.path.resolve().name
        return name[: -len(".zarr")] if name.endswith(".zarr") and len(name) > 5 else name

    def shape(self, block: str) -> tuple[int, int, int]:
        """``(C, H, W)`` of the selected channels of a block."""
        c, h, w = self.arrays[block].shape[3:]
        chosen = self.channels[block]
        return (c if chosen is None else len(chosen), h, w)

    def channel_text(self, block: str) -> str:
        chosen = self.channels[block]
        return format_ints(chosen if chosen is not None else range(self.arrays[block].shape[3]))

    def slabs(self, order: Literal["step", "block"] = "step") -> Iterator[Slab]:
        """Every slab, by step then block (or by block then step), then image, then guidance."""
        pairs = (
            [(s, b) for s in self.steps for b in self.blocks]
            if order == "step"
            else [(s, b) for b in self.blocks for s in self.steps]
        )
        timesteps = self.run.calls.timestep
        for step, block in pairs:
            k = self.calls[step]
            for image in self.images:
                for label, g in self.guidance:
                    yield Slab(block, self.which, step, k, float(timesteps[k]), image, label, g)

    def read(self, slab: Slab) -> np.ndarray:
        """The selected channels ``[C, H, W]`` of one slab, in the stored dtype (reads one chunk)."""
        x = self.arrays[slab.block][slab.call, slab.image, slab.guidance_index]
        chosen = self.channels[slab.block]
        return x if chosen is None else x[chosen]

    def __len__(self) -> int:
        return len(self.blocks) * len(self.steps) * len(self.images) * len(self.guidance)


def select(
    store: Store,
    *,
    blocks: str = "",
    steps: str = "",
    images: str = "",
    guidance: Guidance = "cond",
    channels: str = "",
    which: Which = "output",
    run: str | None = None,
) -> Selection:
    """Check a selection against a store and return it; raise a readable error if it is not there.

    Empty specs select everything: every recorded block, every complete step, every image and
    channel. ``guidance="both"`` selects every recorded half, in the store's order.
    """
    if which not in WHICH_CHOICES:
        raise SelectionError(f"unknown block side {which!r} (valid: {', '.join(WHICH_CHOICES)})")
    if guidance not in GUIDANCE_CHOICES:
        raise SelectionError(f"unknown guidance {guidance!r} (valid: {', '.join(GUIDANCE_CHOICES)})")
    r = store.run(run)
    block_list = store.select_blocks(blocks, run=r.name, which=which)
    if not block_list:
        raise SelectionError(f"run {r.name!r} of {store.path} has no recorded block {which}s")
    arrays = {b: r.array(b, which) for b in block_list}

    step_list = store.select_steps(steps, run=r.name)
    if not step_list:
        raise SelectionError(f"run {r.name!r} of {store.path} has no completely written step")
    calls = {s: r.calls.index(s, 0) for s in step_list}
    for b, arr in arrays.items():
        late = [s for s, k in calls.items() if k >= arr.shape[0]]
        if late:
            raise SelectionError(f"step {late[0]} of block {b} was not written")

    n_images = min(int(a.shape[1]) for a in arrays.values())
    image_list = parse_ints(images, 0, n_images - 1, noun="image", what="image spec")
    if guidance == "both":
        halves = [(label, k) for k, label in enumerate(r.guidance_labels)]
    else:
        halves = [(guidance, r.guidance_index(guidance))]

    chosen: dict[str, list[int] | None] = {}
    for b, arr in arrays.items():
        n = int(arr.shape[3])
        if not channels.strip():
            chosen[b] = None
            continue
        picked = parse_ints(channels, 0, n - 1, noun="channel", what=f"channel spec for {b}")
        chosen[b] = None if picked == list(range(n)) else picked
    return Selection(store, r, which, block_list, step_list, calls, image_list, halves, chosen, arrays)

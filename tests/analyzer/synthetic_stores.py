"""Tiny synthetic stores with the SD1 block names, for render and export tests (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from dumpunet.specs import SD1_BLOCKS
from dumpunet.store_schema import BlockInfo
from dumpunet.store_writer import StoreWriter

# (C, H, W) per block: SD1's pattern of widths and sizes, scaled down to test size.
SHAPES = {
    **{b: (4, 8, 8) for b in ("IN00", "IN01", "IN02")},
    "IN03": (4, 4, 4),
    **{b: (6, 4, 4) for b in ("IN04", "IN05")},
    "IN06": (6, 2, 2),
    **{b: (8, 2, 2) for b in ("IN07", "IN08", "IN09", "IN10", "IN11", "M00", "OUT00", "OUT01", "OUT02")},
    **{b: (8, 4, 4) for b in ("OUT03", "OUT04", "OUT05")},
    **{b: (6, 4, 4) for b in ("OUT06", "OUT07")},
    "OUT08": (6, 8, 8),
    **{b: (4, 8, 8) for b in ("OUT09", "OUT10", "OUT11")},
}
RECORDED_STEPS = (1, 5, 10, 20)
TOTAL_STEPS = 20


def block_table() -> list[BlockInfo]:
    return [BlockInfo(b, f"unet.{b.lower()}", (f"unet.{b.lower()}",), f"unet.{b.lower()}", SHAPES[b], SHAPES[b], True)
            for b in SD1_BLOCKS]


def features(block: str, step: int, n_images: int, seed: int = 0) -> np.ndarray:
    """Deterministic smooth float16 data ``[guidance, image, C, H, W]``; channel c spans about ±(1 + c)."""
    c, h, w = SHAPES[block]
    rng = np.random.default_rng([seed, step, SD1_BLOCKS.index(block)])
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = rng.uniform(0, 2 * np.pi, (2, n_images, c, 1, 1))
    amp = (1.0 + np.arange(c))[None, None, :, None, None]
    data = amp * np.sin(3 * x + 2 * y + phase) + 0.05 * rng.standard_normal((2, n_images, c, h, w))
    return data.astype(np.float16)


def make_store(
    path: Path,
    *,
    n_images: int = 1,
    inputs: bool = False,
    seed: int = 0,
    other_seed_steps: tuple[int, ...] = (),
) -> Path:
    """Write a store of all 25 SD1 blocks at steps 1, 5, 10, 20 of 20 (cfg on, fp16).

    Steps in ``other_seed_steps`` get data from ``seed + 1`` (two stores that agree elsewhere).
    """
    blocks = block_table()
    which = ("output", "input") if inputs else ("output",)
    w = StoreWriter(path, root_attrs={"model": {"name": "tiny-test"}, "blocks": [b.to_json() for b in blocks]})
    w.begin_run("main", {"prompt": "a cute girl", "n_images": n_images, "guidance": ["uncond", "cond"],
                         "steps": TOTAL_STEPS}, blocks, which=which, n_images=n_images, n_guidance=2, dtype="float16")
    for s in RECORDED_STEPS:
        sd = seed + 1 if s in other_seed_steps else seed
        slabs = {(b.name, "output"): features(b.name, s, n_images, sd) for b in blocks}
        if inputs:
            slabs.update({(b.name, "input"): -features(b.name, s, n_images, sd + 7) for b in blocks})
        w.submit_call("main", step=s, substep=0, timestep=1000.0 - 50 * s, slabs=slabs)
    w.finish_run("main", images=np.zeros((n_images, 8, 8, 3), np.uint8), latents=np.zeros((n_images, 4, 1, 1), np.float32))
    w.close()
    return path


def mark_interrupted(path: Path, step: int) -> None:
    """Make ``step`` look like a call a killed recording never finished (call_done = 0)."""
    done = zarr.open_array(path / "runs/main/call_done", mode="r+")
    done[RECORDED_STEPS.index(step)] = 0

"""Tiny synthetic stores with the SD1 block names, for render and export tests (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from dumpunet.specs import SD1_BLOCKS
from dumpunet.store.schema import BlockInfo, PairInfo, RunAttrs
from dumpunet.store.writer import StoreWriter

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
    w = StoreWriter(path, model={"name": "tiny-test"}, versions={})
    w.set_block_table(blocks)
    info = RunAttrs(prompt="a cute girl", n_images=n_images, guidance=("uncond", "cond"), steps=TOTAL_STEPS)
    w.begin_run("main", info, blocks, which=which, dtype="float16")
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


def make_paired_store(
    path: Path,
    *,
    labels: tuple[str, ...] = ("layered",),
    blocks: tuple[str, ...] = ("IN00", "IN04", "M00", "OUT11"),
    n_images: int = 1,
    steps: tuple[int, ...] = RECORDED_STEPS,
    base_steps: tuple[int, ...] | None = None,
    base_shapes: dict[str, tuple[int, int, int]] | None = None,
    zero_base: tuple[tuple[str, int], ...] = (),
    unfinished: tuple[str, ...] = (),
    image_size: tuple[int, int] = (12, 16),
) -> Path:
    """A store with a run ``base`` and one layered run per label, paired as ``record --pair``
    (label ``layered``) or ``sweep`` (labels = block names) lay them out.

    Runs record ``steps`` (the base: ``base_steps`` if given). The base run's block data is
    :func:`features` with seed 10 (all zero at the (block, step) pairs of ``zero_base``);
    layered run k adds the features of seed 10 + k, weighted more in later blocks and steps, so
    each block changes by its own amount.
    Final images: :func:`final_image` (k), ``image_size`` (H, W); runs in ``unfinished`` have none.
    """
    table = block_table()
    w = StoreWriter(path, model={"name": "tiny-test"}, versions={})
    w.set_block_table(table)
    runs = ["base", *labels]
    for k, run in enumerate(runs):
        chosen = [b for b in table if b.name in blocks]
        if run == "base" and base_shapes:
            chosen = [BlockInfo(b.name, b.module, b.modules, b.input_module, base_shapes.get(b.name, b.output_shape),
                                b.input_shape, True) for b in chosen]
        info = RunAttrs(prompt=f"prompt {run}", n_images=n_images, guidance=("uncond", "cond"), steps=TOTAL_STEPS)
        w.begin_run(run, info, chosen, which=("output",), dtype="float16")
        for s in base_steps if run == "base" and base_steps is not None else steps:
            slabs = {}
            for b in chosen:
                x = features(b.name, s, n_images, seed=10)
                if run == "base" and (b.name, s) in zero_base:
                    x[:] = 0
                elif run != "base":
                    weight = 0.1 * (1 + blocks.index(b.name)) * (0.5 + s / TOTAL_STEPS)
                    x = (x + weight * features(b.name, s, n_images, seed=10 + k)).astype(np.float16)
                if x.shape[2:] != b.output_shape:
                    x = np.resize(x, (2, n_images, *b.output_shape))
                slabs[(b.name, "output")] = x
            w.submit_call(run, step=s, substep=0, timestep=1000.0 - 50 * s, slabs=slabs)
        if run not in unfinished:
            images = np.stack([final_image(k, i, image_size) for i in range(n_images)])
            w.finish_run(run, images=images, latents=np.zeros((n_images, 4, 1, 1), np.float32))
    w.set_pairs([PairInfo(base="base", layered=run, label=run) for run in labels])
    w.close()
    return path


def final_image(k: int, i: int, size: tuple[int, int] = (12, 16)) -> np.ndarray:
    """Final image ``i`` of run ``k``: uint8 ``[H, W, 3]``, differing between runs in places."""
    rng = np.random.default_rng([k, i])
    base = np.random.default_rng([0, i]).integers(0, 256, (*size, 3), dtype=np.uint8)
    img = base.copy()
    if k:
        mask = rng.random(size) < 0.3
        img[mask] = rng.integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
    return img

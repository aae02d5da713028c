"""Small stores for viewer tests: SD1 blocks with cross- and self-attention, tokens (a negative prompt's too) and a
final image; and the SDXL block layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from synthetic_stores import SHAPES, block_table, features

from dumpunet.specs import SDXL_BLOCKS
from dumpunet.store import schema
from dumpunet.store.schema import BlockInfo, LayerAttrs, PairInfo, RunAttrs, TokenRow
from dumpunet.store.writer import StoreWriter

TOKENS = ["<|startoftext|>", "a</w>", "pink</w>", "h", "air</w>", "girl</w>", "<|endoftext|>"] + ["<|endoftext|>"] * 3
OTHER_TOKENS = ["<|startoftext|>", "a</w>", "red</w>", "h", "air</w>", "car</w>", "<|endoftext|>"] + ["<|endoftext|>"] * 3
NEG = ["<|startoftext|>", "bad</w>", "<|endoftext|>"] + ["<|endoftext|>"] * 7
HEADS, T, SIZE = 2, len(TOKENS), 16
STEPS = (1, 2, 3)
CROSS = {"IN01.attn2": SHAPES["IN01"][1:], "M00.attn2": SHAPES["M00"][1:]}
SELF = ("OUT11.attn1", SHAPES["OUT11"][1:])


def probs(step: int, layer: int, queries: int, keys: int, seed: int = 0) -> np.ndarray:
    """Softmax rows [guidance, image, head, query, key], different for every argument."""
    rng = np.random.default_rng([step, layer, queries, seed] if seed else [step, layer, queries])
    p = np.exp(rng.normal(size=(2, 1, HEADS, queries, keys)))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def final_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(7 + seed).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)


def make_attention_store(path: Path, *, steps: tuple[int, ...] = STEPS, finish: bool = True, seed: int = 0,
                         pair: bool = False) -> Path:
    """25 SD1 blocks (tiny shapes), steps ``steps`` of 3, attention on IN01 and M00, self-attention on OUT11.

    One run ``main`` (prompt "a pink hair girl"); ``seed`` other than 0 draws other attention, features
    and final image. ``pair``: runs ``base`` (prompt "a red hair car", seed + 1) and ``layered`` (as
    ``main``), paired as ``record --pair`` pairs them (label ``layered``).
    """
    blocks = block_table()
    w = StoreWriter(path, model={"name": "tiny-test"}, versions={})
    w.set_block_table(blocks)
    runs = [("base", seed + 1, OTHER_TOKENS, "a red hair car"), ("layered", seed, TOKENS, "a pink hair girl")] if pair \
        else [("main", seed, TOKENS, "a pink hair girl")]
    for name, run_seed, words, prompt in runs:
        _write_run(w, name, blocks, steps, finish, run_seed, words, prompt)
    if pair:
        w.set_pairs([PairInfo(base="base", layered="layered", label="layered")])
    w.close()
    return path


def _write_run(w: StoreWriter, name: str, blocks: list, steps: tuple[int, ...], finish: bool, seed: int,
               words: list[str], prompt: str) -> None:
    tokens = {"cond": (TokenRow(tuple(range(T)), tuple(words), 7),),
              "uncond": (TokenRow(tuple(range(T)), tuple(NEG), 3),)}
    info = RunAttrs(prompt=prompt, n_images=1, guidance=("uncond", "cond"), steps=3, height=SIZE,
                    width=SIZE, attention_layers=(*CROSS, SELF[0]), tokens=tokens)
    w.begin_run(name, info, blocks, which=("output",), dtype="float16")
    kind = schema.ATTENTION_FEATURES["qk"]
    arrays = {(layer, "qk"): (kind, (1, 2, HEADS, hw[0] * hw[1], T), "float32", {"layer": layer}, LayerAttrs(layer_hw=hw))
              for layer, hw in CROSS.items()}
    hw = SELF[1]
    arrays[(SELF[0], "qk")] = (kind, (1, 2, HEADS, hw[0] * hw[1], hw[0] * hw[1]), "float32", {"layer": SELF[0]},
                               LayerAttrs(layer_hw=hw, cross_attention=False))
    w.add_arrays(name, arrays)
    for s in steps:
        slabs = {(b.name, "output"): features(b.name, s, 1, seed=seed) for b in blocks}
        for k, (layer, (h, ww)) in enumerate(CROSS.items()):
            slabs[(layer, "qk")] = probs(s, k, h * ww, T, seed)
        slabs[(SELF[0], "qk")] = probs(s, 9, hw[0] * hw[1], hw[0] * hw[1], seed)
        w.submit_call(name, step=s, substep=0, timestep=1000.0 - 100 * s, slabs=slabs)
    if finish:
        w.finish_run(name, images=final_image(seed), latents=np.zeros((1, 4, 1, 1), np.float32))


# (C, H, W) per block: SDXL's layout (9 IN, M00, 9 OUT; two downsamplings), scaled down to test size.
SDXL_SHAPES = {
    **{b: (4, 8, 8) for b in ("IN00", "IN01", "IN02")},
    **{b: (6, 4, 4) for b in ("IN03", "IN04", "IN05")},
    **{b: (8, 2, 2) for b in ("IN06", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02")},
    **{b: (6, 4, 4) for b in ("OUT03", "OUT04", "OUT05")},
    **{b: (4, 8, 8) for b in ("OUT06", "OUT07", "OUT08")},
}


def make_sdxl_store(path: Path) -> Path:
    """The 19 SDXL blocks IN00..IN08, M00, OUT00..OUT08 (tiny shapes), all recorded at steps 1 and 2 of 2."""
    assert tuple(SDXL_SHAPES) == SDXL_BLOCKS
    blocks = [BlockInfo(b, f"unet.{b.lower()}", (f"unet.{b.lower()}",), f"unet.{b.lower()}", shape, shape, True)
              for b, shape in SDXL_SHAPES.items()]
    w = StoreWriter(path, model={"name": "tiny-sdxl-test"}, versions={})
    w.set_block_table(blocks)
    info = RunAttrs(prompt="a pink hair girl", n_images=1, guidance=("uncond", "cond"), steps=2, height=SIZE, width=SIZE)
    w.begin_run("main", info, blocks, which=("output",), dtype="float16")
    for s in (1, 2):
        rng = np.random.default_rng([s, 19])
        slabs = {(b.name, "output"): rng.normal(size=(2, 1, *b.output_shape)).astype(np.float16) for b in blocks}
        w.submit_call("main", step=s, substep=0, timestep=1000.0 - 500 * s, slabs=slabs)
    w.finish_run("main", images=final_image(), latents=np.zeros((1, 4, 1, 1), np.float32))
    w.close()
    return path

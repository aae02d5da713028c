"""A small store with blocks, cross- and self-attention, tokens and a final image, for viewer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from synthetic_stores import SHAPES, block_table, features

from dumpunet.store import schema
from dumpunet.store.schema import LayerAttrs, RunAttrs, TokenRow
from dumpunet.store.writer import StoreWriter

TOKENS = ["<|startoftext|>", "a</w>", "pink</w>", "h", "air</w>", "girl</w>", "<|endoftext|>"] + ["<|endoftext|>"] * 3
NEG = ["<|startoftext|>", "bad</w>", "<|endoftext|>"] + ["<|endoftext|>"] * 7
HEADS, T, SIZE = 2, len(TOKENS), 16
STEPS = (1, 2, 3)
CROSS = {"IN01.attn2": SHAPES["IN01"][1:], "M00.attn2": SHAPES["M00"][1:]}
SELF = ("OUT11.attn1", SHAPES["OUT11"][1:])


def probs(step: int, layer: int, queries: int, keys: int) -> np.ndarray:
    """Softmax rows [guidance, image, head, query, key], different for every argument."""
    rng = np.random.default_rng([step, layer, queries])
    p = np.exp(rng.normal(size=(2, 1, HEADS, queries, keys)))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def final_image() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)


def make_attention_store(path: Path, *, steps: tuple[int, ...] = STEPS, finish: bool = True) -> Path:
    """25 SD1 blocks (tiny shapes), steps ``steps`` of 3, attention on IN01 and M00, self-attention on OUT11."""
    blocks = block_table()
    w = StoreWriter(path, model={"name": "tiny-test"}, versions={})
    w.set_block_table(blocks)
    tokens = {"cond": (TokenRow(tuple(range(T)), tuple(TOKENS), 7),),
              "uncond": (TokenRow(tuple(range(T)), tuple(NEG), 3),)}
    info = RunAttrs(prompt="a pink hair girl", n_images=1, guidance=("uncond", "cond"), steps=3, height=SIZE,
                    width=SIZE, attention_layers=(*CROSS, SELF[0]), tokens=tokens)
    w.begin_run("main", info, blocks, which=("output",), dtype="float16")
    kind = schema.ATTENTION_FEATURES["qk"]
    arrays = {(name, "qk"): (kind, (1, 2, HEADS, hw[0] * hw[1], T), "float32", {"layer": name}, LayerAttrs(layer_hw=hw))
              for name, hw in CROSS.items()}
    hw = SELF[1]
    arrays[(SELF[0], "qk")] = (kind, (1, 2, HEADS, hw[0] * hw[1], hw[0] * hw[1]), "float32", {"layer": SELF[0]},
                               LayerAttrs(layer_hw=hw, cross_attention=False))
    w.add_arrays("main", arrays)
    for s in steps:
        slabs = {(b.name, "output"): features(b.name, s, 1) for b in blocks}
        for k, (name, (h, ww)) in enumerate(CROSS.items()):
            slabs[(name, "qk")] = probs(s, k, h * ww, T)
        slabs[(SELF[0], "qk")] = probs(s, 9, hw[0] * hw[1], hw[0] * hw[1])
        w.submit_call("main", step=s, substep=0, timestep=1000.0 - 100 * s, slabs=slabs)
    if finish:
        w.finish_run("main", images=final_image(), latents=np.zeros((1, 4, 1, 1), np.float32))
    w.close()
    return path

"""Stores as lazy xarray datasets: named dims, coordinates, values equal to the reader's, reads on compute only."""

from __future__ import annotations

import numpy as np
import pytest

import dumpunet
from dumpunet.errors import DamagedChunkError, SelectionError, StoreError
from dumpunet.store import schema
from dumpunet.store.schema import LayerAttrs, RunAttrs, TokenRow
from dumpunet.store.writer import StoreWriter
from synthetic_stores import RECORDED_STEPS, SHAPES, features, make_store, mark_interrupted
from test_store import BLOCKS, slab, spy_reads, write_store

xr = pytest.importorskip("xarray")
pytest.importorskip("dask")

TOKENS = ("<|startoftext|>", "a</w>", "cat</w>", "<|endoftext|>")


def qk(step: int, n_guid: int = 2) -> np.ndarray:
    """Softmax rows ``[guidance, image, head, query, token]`` (2 heads, 4x4 queries, 4 tokens), one set per step."""
    p = np.exp(np.random.default_rng(step).normal(size=(n_guid, 1, 2, 16, len(TOKENS))))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def attention_store(p, *, substeps: bool = False):
    """Blocks IN00, IN01 and cross-attention IN01.attn2 at steps 1-3 (with ``substeps``: two calls per step)."""
    w = StoreWriter(p, model={}, versions={})
    w.set_block_table(BLOCKS)
    tokens = {g: (TokenRow(tuple(range(4)), TOKENS, 4),) for g in ("uncond", "cond")}
    w.begin_run("main", RunAttrs(n_images=1, guidance=("uncond", "cond"), steps=3, attention_layers=("IN01.attn2",),
                                 tokens=tokens), BLOCKS, which=("output",), dtype="float16")
    w.add_arrays("main", {("IN01.attn2", "qk"): (schema.ATTENTION_FEATURES["qk"], (1, 2, 2, 16, 4), "float32",
                                                  {"layer": "IN01.attn2"}, LayerAttrs(layer_hw=(4, 4)))})
    for s in (1, 2, 3):
        for sub in (0, 1) if substeps else (0,):
            slabs = {(b.name, "output"): slab(10 * s + sub, b, n_img=1) for b in BLOCKS}
            w.submit_call("main", step=s, substep=sub, timestep=100.0 * s - sub, slabs={**slabs, ("IN01.attn2", "qk"): qk(10 * s + sub)})
    w.close()
    return p


def test_a_run_is_a_dataset_with_named_dims_and_the_readers_values(tmp_path):
    p = make_store(tmp_path / "girl.zarr", n_images=2)
    store = dumpunet.open(p)
    ds = store.to_xarray(blocks="IN01,OUT11,IN03")
    assert list(ds.data_vars) == ["IN01", "IN03", "OUT11"]
    assert ds["OUT11"].dims == ("step", "image", "guidance", "channel", "y_8", "x_8")  # IN03 is 4x4x4
    assert ds["step"].values.tolist() == list(RECORDED_STEPS)
    assert ds["timestep"].values.tolist() == [1000.0 - 50 * s for s in RECORDED_STEPS]
    assert list(ds["guidance"].values) == ["uncond", "cond"] and ds.attrs["prompt"] == "a cute girl"
    for block in ("IN01", "IN03", "OUT11"):
        for s in (5, 20):
            got = ds[block].sel(step=s, guidance="cond", image=1).values
            np.testing.assert_array_equal(got, store.features(block, s, image=1))
    same = store.to_xarray(blocks="OUT09-OUT11")
    assert same["OUT11"].dims == ("step", "image", "guidance", "channel", "y", "x")
    means = same["OUT11"].astype("float64").mean(["y", "x"]).sel(guidance="cond").values
    want = features("OUT11", 10, 2)[1].astype(np.float64).mean((2, 3))
    np.testing.assert_allclose(means[list(RECORDED_STEPS).index(10)], want)


def test_nothing_is_read_until_computed_and_then_each_chunk_once(tmp_path, monkeypatch):
    p = tmp_path / "s.zarr"
    write_store(p)
    reads = spy_reads(monkeypatch)
    ds = dumpunet.open(p).to_xarray()
    assert [k for k in reads if "/blocks/" in k and "/c." in k] == []
    ds["IN01"].sel(step=2, guidance="uncond").isel(image=1).values  # noqa: B018
    assert [k for k in reads if "/blocks/" in k and "/c." in k] == ["runs/main/blocks/IN01/output/c.1.1.0.0.0.0"]


def test_many_stores_stack_along_run_matched_by_step(tmp_path):
    a = make_store(tmp_path / "a.zarr")
    c = make_store(tmp_path / "c.zarr", seed=5)
    mark_interrupted(c, 20)  # c lacks step 20
    ds = dumpunet.open_dataset([a, c], blocks="OUT11")
    assert ds["run"].values.tolist() == ["a", "c"] and ds["run_name"].values.tolist() == ["main", "main"]
    assert ds["OUT11"].dims == ("run", "step", "image", "guidance", "channel", "y", "x")
    assert ds["step"].values.tolist() == list(RECORDED_STEPS)
    np.testing.assert_array_equal(ds["OUT11"].sel(run="c", step=10, guidance="cond").isel(image=0).values,
                                  dumpunet.open(c).features("OUT11", 10))
    assert np.isnan(ds["OUT11"].sel(run="c", step=20).values.astype(np.float32)).all()
    np.testing.assert_array_equal(ds["OUT11"].sel(run="a", step=20, guidance="uncond").isel(image=0).values,
                                  dumpunet.open(a).features("OUT11", 20, guidance="uncond"))
    b = tmp_path / "b.zarr"
    write_store(b)  # IN01 is 6x4x4 there, 4x8x8 in a
    with pytest.raises(StoreError, match=r"^the stores cannot be stacked: IN01 is 4x8x8 in a but 6x4x4 in b; open them one by one$"):
        dumpunet.open_dataset([a, b], blocks="IN01")
    with pytest.raises(SelectionError, match=rf"^{a.resolve()} is given twice$"):
        dumpunet.open_dataset([a, a], blocks="OUT11")


def test_attention_has_token_labels_and_substeps_an_indexed_step(tmp_path):
    store = dumpunet.open(attention_store(tmp_path / "a.zarr"))
    ds = store.to_xarray(blocks="IN01", layers="")
    assert ds["IN01.attn2.qk"].dims == ("step", "image", "guidance", "head", "query", "token")
    assert ds["token_label"].sel(guidance="cond").values.tolist() == list(TOKENS)
    np.testing.assert_array_equal(ds["IN01.attn2.qk"].sel(step=2, guidance="uncond").isel(image=0).values, qk(20)[0, 0])
    sub = dumpunet.open(attention_store(tmp_path / "h.zarr", substeps=True)).to_xarray(blocks="IN00")
    assert sub["IN00"].dims[0] == "call" and sub["substep"].values.tolist() == [0, 1] * 3
    both = sub["IN00"].sel(step=2, guidance="cond").isel(image=0).values
    np.testing.assert_array_equal(both, np.stack([slab(20, BLOCKS[0], n_img=1)[1, 0], slab(21, BLOCKS[0], n_img=1)[1, 0]]))


def test_a_damaged_chunk_is_an_error_on_compute_never_zeros(tmp_path):
    p = tmp_path / "d.zarr"
    write_store(p)
    (p / "runs/main/blocks/IN01/output/c.1.0.1.0.0.0").unlink()
    ds = dumpunet.open(p).to_xarray()
    with pytest.raises(DamagedChunkError, match=r"runs/main/blocks/IN01/output: call 1 \(step 2\), image 0, cond: chunk c.1.0.1.0.0.0 is missing"):
        ds["IN01"].sel(step=2, guidance="cond").isel(image=0).values  # noqa: B018
    assert SHAPES["IN01"] == (4, 8, 8)

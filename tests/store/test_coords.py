"""Format 1.1 coordinate arrays: plain xarray selects by guidance label and step, also after an interrupt."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import dumpunet
from dumpunet.store import schema
from dumpunet.store.schema import LayerAttrs, RunAttrs
from dumpunet.store.validate import validate
from dumpunet.store.writer import GROW_CALLS, StoreWriter
from test_store import BLOCKS, KILL_SCRIPT, slab, write_store

xr = pytest.importorskip("xarray")


def open_block(p: Path, block: str = "IN01") -> xr.Dataset:
    return xr.open_zarr(p, group=f"runs/main/blocks/{block}", consolidated=False)


def test_plain_xarray_selects_by_guidance_label_and_step(tmp_path):
    p = tmp_path / "s.zarr"
    write_store(p, inputs=True)
    ds = open_block(p)
    assert list(ds["guidance"].values) == ["uncond", "cond"]
    assert ds["step"].values.tolist() == [1, 2, 3] and ds["substep"].values.tolist() == [0, 0, 0]
    assert ds["timestep"].values.tolist() == [999.0, 998.0, 997.0]
    assert set(ds.coords) == {"guidance", "step", "substep", "timestep"}  # not data variables: CF 'coordinates'
    cond = ds["output"].sel(guidance="cond").isel(call=1, image=1).values
    np.testing.assert_array_equal(cond, slab(2, BLOCKS[1])[1, 1])
    at3 = ds.set_xindex("step").sel(step=3, guidance="uncond")["input"].isel(image=0).values
    np.testing.assert_array_equal(at3, slab(3, BLOCKS[1], "input")[0, 0])
    tree = xr.open_datatree(p, engine="zarr", consolidated=False)
    node = tree["runs/main/blocks/IN00"].to_dataset()
    np.testing.assert_array_equal(node["output"].sel(guidance="cond").isel(call=0, image=0).values, slab(1, BLOCKS[0])[1, 0])
    root = json.loads((p / "zarr.json").read_text())["attributes"]["dumpunet"]
    assert (root["format_version"], root["format_minor"]) >= (1, 1)


def test_coordinates_grow_with_the_arrays_in_batches_and_are_trimmed_with_them(tmp_path):
    p = tmp_path / "g.zarr"
    w = StoreWriter(p, model={}, versions={}, grow_calls=4)
    w.set_block_table(BLOCKS)
    w.begin_run("main", RunAttrs(n_images=2, guidance=("uncond", "cond"), steps=5), BLOCKS, which=("output",),
                dtype="float16")
    for s in (1, 2, 3, 4, 5):
        w.submit_call("main", step=s, substep=0, timestep=10.0 * s, slabs={(b.name, "output"): slab(s, b) for b in BLOCKS})
    w.flush()
    ds = open_block(p)  # mid-recording: the arrays grew at calls 0 and 4 (to 8), labelling the calls up to then
    assert ds.sizes["call"] == 8
    assert ds["step"].values.tolist() == [1, 2, 3, 4, 5, 0, 0, 0]  # 0: no such step, not labelled yet
    assert ds["timestep"].values[:5].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0] and np.isnan(ds["timestep"].values[5:]).all()
    w.submit_call("main", step=6, substep=0, timestep=60.0, slabs={(b.name, "output"): slab(6, b) for b in BLOCKS})
    w.flush()
    assert open_block(p)["step"].values.tolist() == [1, 2, 3, 4, 5, 0, 0, 0]  # call 5 waits for the next batch
    w.close()
    ds = open_block(p)
    assert ds.sizes["call"] == 6 and ds["step"].values.tolist() == [1, 2, 3, 4, 5, 6]


def test_a_layer_added_during_the_run_labels_the_calls_before_it(tmp_path):
    p = tmp_path / "l.zarr"
    w = StoreWriter(p, model={}, versions={}, grow_calls=2)
    w.set_block_table(BLOCKS)
    w.begin_run("main", RunAttrs(n_images=1, guidance=("cond",), steps=3, attention_layers=("IN01.attn2",)), BLOCKS,
                which=("output",), dtype="float16")
    out = {(b.name, "output"): lambda b=b, s=1: slab(s, b, n_img=1, n_guid=1) for b in BLOCKS}
    w.submit_call("main", step=1, substep=0, timestep=5.0, slabs=out)
    w.submit_call("main", step=1, substep=1, timestep=4.0, slabs=out)
    w.add_arrays("main", {("IN01.attn2", "qk"): (schema.ATTENTION_FEATURES["qk"], (1, 1, 2, 16, 3), "float32",
                                                  {"layer": "IN01.attn2"}, LayerAttrs(layer_hw=(4, 4)))})
    qk = np.full((1, 1, 2, 16, 3), 1 / 3, np.float32)
    w.submit_call("main", step=2, substep=0, timestep=3.0, slabs={**out, ("IN01.attn2", "qk"): qk})
    w.close()
    ds = xr.open_zarr(p, group="runs/main/attention/IN01.attn2", consolidated=False)
    assert ds["step"].values.tolist() == [1, 1, 2] and ds["substep"].values.tolist() == [0, 1, 0]
    assert ds["timestep"].values.tolist() == [5.0, 4.0, 3.0] and list(ds["guidance"].values) == ["cond"]


def test_coordinates_match_the_call_table_after_a_kill(tmp_path):
    from waiting import BACKSTOP, wait_until

    p = tmp_path / "k.zarr"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), path=str(p))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        done = p / "runs/main/call_done"
        wait_until(lambda: (done / "c.0").exists() and zarr.open_array(done, mode="r").shape[0] > 5, proc=proc,
                   what="6 written calls")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(BACKSTOP)
    # the call tables grow one after another, so a kill may leave them one call apart: read them as arrays
    call_done, call_step = (zarr.open_array(p / "runs/main" / name, mode="r")[:] for name in ("call_done", "call_step"))
    n_done = int(call_done.sum())
    for block in ("IN00", "IN01"):
        ds = open_block(p, block)
        steps = ds["step"].values
        assert ds.sizes["call"] == steps.size >= n_done  # grown with the arrays, never shorter
        labelled = int(np.flatnonzero(steps).max()) + 1
        assert n_done - GROW_CALLS < labelled <= n_done + 1  # batches: at most the last grow_calls - 1 done calls wait
        np.testing.assert_array_equal(steps[:labelled], call_step[:labelled])
        assert not steps[labelled:].any()  # the rest is the fill value, never a wrong step
        last = min(labelled, n_done)  # a labelled call may still be in flight: read a done one
        at = ds.isel(call=slice(0, last)).set_xindex("step").sel(step=last, guidance="cond")["output"]
        np.testing.assert_array_equal(at.isel(image=1).values, slab(last, BLOCKS[1] if block == "IN01" else BLOCKS[0])[1, 1])
    report = validate(p)
    assert report.ok, report.problems
    ds = dumpunet.open(p).to_xarray()
    assert ds["step"].values.tolist() == dumpunet.open(p).steps  # from the call tables: every done step


def strip_coordinates(p: Path) -> None:
    """Turn a store into format 1.0: no coordinate arrays, no 'coordinates' attribute, minor version 0."""
    for kind in schema.COORDS.values():
        for folder in p.glob(f"runs/*/*/*/{kind.key}"):
            shutil.rmtree(folder)
    for doc in p.glob("runs/*/*/*/*/zarr.json"):
        meta = json.loads(doc.read_text())
        meta["attributes"].pop(schema.COORDINATES_KEY, None)
        doc.write_text(json.dumps(meta))
    root = json.loads((p / "zarr.json").read_text())
    root["attributes"]["dumpunet"]["format_minor"] = 0
    (p / "zarr.json").write_text(json.dumps(root))


def test_a_format_1_0_store_still_opens_everywhere(tmp_path):
    p = tmp_path / "old.zarr"
    write_store(p)
    strip_coordinates(p)
    assert not list(p.glob("runs/main/blocks/*/step"))
    store = dumpunet.open(p)
    np.testing.assert_array_equal(store.features("IN01", 2, image=1), slab(2, BLOCKS[1])[1, 1])
    assert validate(p).ok
    ds = store.to_xarray(blocks="IN01")  # coordinates from the call tables
    assert ds["timestep"].values.tolist() == [999.0, 998.0, 997.0]
    np.testing.assert_array_equal(ds["IN01"].sel(step=2, guidance="cond").isel(image=1).values, slab(2, BLOCKS[1])[1, 1])
    assert "step" not in open_block(p).coords


def test_validate_names_a_coordinate_that_contradicts_the_call_table(tmp_path):
    p = tmp_path / "bad.zarr"
    write_store(p)
    zarr.open_array(p / "runs/main/blocks/IN01/step", mode="r+")[1] = 7
    labels = zarr.open_array(p / "runs/main/blocks/IN00/guidance", mode="r+")
    labels[...] = np.array(["cond", "uncond"])
    problems = validate(p).problems
    assert "runs/main/blocks/IN01/step: call 1 says step 7, the call table says 2" in problems
    assert "runs/main/blocks/IN00/guidance: labels ['cond', 'uncond'], run attributes say ['uncond', 'cond']" in problems

"""The store contract without torch: writer, reader, validation, crash consistency."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

import dumpunet
from dumpunet.store import schema
from dumpunet.store.validate import validate
from dumpunet.errors import IncompleteStepError, RecordError, SelectionError, StoreError, StoreNotFoundError
from dumpunet.store.schema import BlockInfo, RunAttrs
from dumpunet.store.localfiles import SafeLocalStore, StoreFiles
from dumpunet.store.writer import StoreWriter

BLOCKS = [
    BlockInfo("IN00", "conv_in", ("conv_in",), "conv_in", (4, 8, 8), (4, 8, 8), False),
    BlockInfo(
        "IN01",
        "down_blocks.0.attentions.0",
        ("down_blocks.0.resnets.0", "down_blocks.0.attentions.0"),
        "down_blocks.0.resnets.0",
        (6, 4, 4),
        (4, 8, 8),
        True,
    ),
]


def slab(step: int, block: BlockInfo, which: str = "output", n_img: int = 2, n_guid: int = 2) -> np.ndarray:
    """Deterministic [guidance, image, C, H, W] data that encodes its own coordinates."""
    shape = block.output_shape if which == "output" else block.input_shape
    g = np.arange(n_guid)[:, None, None, None, None]
    i = np.arange(n_img)[None, :, None, None, None]
    c = np.arange(shape[0])[None, None, :, None, None]
    base = step * 1000 + g * 100 + i * 10 + c
    noise = np.linspace(0, 0.5, shape[1] * shape[2]).reshape(shape[1], shape[2])
    return (base + noise).astype(np.float16)


def write_store(path: Path, steps: int = 3, *, inputs: bool = False, finish: bool = True) -> None:
    w = StoreWriter(path, model={"name": "unit"}, versions={})
    w.set_block_table(BLOCKS)
    which = ("output", "input") if inputs else ("output",)
    w.begin_run("main", RunAttrs(prompt="p", n_images=2, guidance=("uncond", "cond"), steps=steps),
                BLOCKS, which=which, dtype="float16")
    for s in range(1, steps + 1):
        w.submit_call("main", step=s, substep=0, timestep=1000.0 - s,
                      slabs={(b.name, x): slab(s, b, x) for b in BLOCKS for x in which})
    if finish:
        w.finish_run("main", images=np.full((2, 16, 16, 3), 7, np.uint8), latents=np.ones((2, 4, 2, 2), np.float32))
    w.close()


def test_round_trip_puts_each_image_and_guidance_half_in_place(tmp_path):
    p = tmp_path / "s.zarr"
    write_store(p, inputs=True)
    store = dumpunet.open(p)
    assert store.blocks == ["IN00", "IN01"]
    assert store.steps == [1, 2, 3]
    for step in (1, 3):
        for b in BLOCKS:
            full = slab(step, b)
            for gi, g in enumerate(("uncond", "cond")):
                for i in range(2):
                    got = store.features(b.name, step, guidance=g, image=i)
                    np.testing.assert_array_equal(got, full[gi, i])
            np.testing.assert_array_equal(store.features(b.name, step, which="input"), slab(step, b, "input")[1, 0])
    assert store.features("IN01", 2, dtype="float32").dtype == np.float32
    assert store.features("down_blocks.0.attentions.0", 2).shape == (6, 4, 4)
    np.testing.assert_array_equal(store.image(1), np.full((16, 16, 3), 7, np.uint8))
    assert store.run().complete
    assert validate(p).ok


def test_every_array_has_schema_dims_so_xarray_names_them(tmp_path):
    xr = pytest.importorskip("xarray")
    p = tmp_path / "s.zarr"
    write_store(p, inputs=True)
    ds = xr.open_zarr(p, group="runs/main/blocks/IN01", consolidated=False)
    assert ds["output"].dims == schema.BLOCK_OUTPUT.dims
    assert ds["input"].dims == schema.BLOCK_INPUT.dims
    assert ds.sizes["channel"] == 6 and ds.sizes["in_channel"] == 4
    run = xr.open_zarr(p, group="runs/main", consolidated=False)
    assert run["call_step"].dims == ("call",) and run["call_step"].values.tolist() == [1, 2, 3]
    assert run["images"].dims == schema.IMAGES.dims


def spy_reads(monkeypatch, *, roots: bool = False) -> list:
    """The keys any local store reads from now on (by any thread), in order; ``roots``: (store root, key) pairs.

    Reads through zarr (``SafeLocalStore.get``) and the reader's direct chunk reads (``StoreFiles.read_exact``).
    """
    reads: list = []
    orig = SafeLocalStore.get
    orig_exact = StoreFiles.read_exact

    async def spy(self, key, *a, **kw):
        reads.append((str(self.root), key) if roots else key)
        return await orig(self, key, *a, **kw)

    def spy_exact(self, key, *a, **kw):
        reads.append((str(self.root), key) if roots else key)
        return orig_exact(self, key, *a, **kw)

    monkeypatch.setattr(SafeLocalStore, "get", spy)
    monkeypatch.setattr(StoreFiles, "read_exact", spy_exact)
    return reads


def test_one_feature_read_touches_one_chunk(tmp_path, monkeypatch):
    p = tmp_path / "s.zarr"
    write_store(p)
    store = dumpunet.open(p)
    store.run().calls  # the call table is read once per run
    reads = spy_reads(monkeypatch)
    store.features("IN01", 2, guidance="uncond", image=1)
    chunks = [k for k in reads if "/c." in k]
    assert chunks == ["runs/main/blocks/IN01/output/c.1.1.0.0.0.0"]


def test_a_run_reads_an_arrays_metadata_once(tmp_path, monkeypatch):
    p = tmp_path / "s.zarr"
    write_store(p)
    store = dumpunet.open(p)
    store.features("IN01", 1)  # opens the array (and the call table)
    reads = spy_reads(monkeypatch)
    np.testing.assert_array_equal(store.features("IN01", 2), slab(2, BLOCKS[1])[1, 0])
    np.testing.assert_array_equal(store.features("IN01", 3, image=0, guidance="uncond"), slab(3, BLOCKS[1])[0, 0])
    assert reads == ["runs/main/blocks/IN01/output/c.1.0.1.0.0.0", "runs/main/blocks/IN01/output/c.2.0.0.0.0.0"]


def test_a_run_opened_during_a_recording_reads_every_step_it_lists(tmp_path, monkeypatch):
    # A recording completes a call just after the reader opened an array (arrays grow one call at
    # a time here): the run must not list a step that its opened array is too short to hold.
    p = tmp_path / "s.zarr"
    w = StoreWriter(p, model={}, versions={}, grow_calls=1)
    w.set_block_table(BLOCKS)
    w.begin_run("main", RunAttrs(n_images=2, guidance=("uncond", "cond"), steps=3), BLOCKS, which=("output",), dtype="float16")

    def write_step(s: int) -> None:
        w.submit_call("main", step=s, substep=0, timestep=0.0, slabs={(b.name, "output"): slab(s, b) for b in BLOCKS})
        w.flush()

    write_step(1)
    run = dumpunet.open(p).run()
    orig = schema.open_array

    def open_then_record(root, kind, **names):
        arr = orig(root, kind, **names)
        if kind is schema.BLOCK_ARRAYS["output"] and w.completed_steps("main") == [1]:
            write_step(2)
        return arr

    monkeypatch.setattr(schema, "open_array", open_then_record)
    np.testing.assert_array_equal(run.features("IN01", 1), slab(1, BLOCKS[1])[1, 0])
    assert w.completed_steps("main") == [1, 2]
    for s in run.steps:
        np.testing.assert_array_equal(run.features("IN01", s), slab(s, BLOCKS[1])[1, 0])
    monkeypatch.undo()
    w.close()
    assert dumpunet.open(p).steps == [1, 2]  # a store opened again sees the new step


def test_selection_errors_name_what_exists(tmp_path):
    p = tmp_path / "s.zarr"
    write_store(p)
    store = dumpunet.open(p)
    with pytest.raises(SelectionError, match=r"step 9 was not recorded \(recorded steps: 1-3\)"):
        store.features("IN00", 9)
    with pytest.raises(SelectionError, match=r"unknown block 'IN05' \(this model has IN00, IN01\)"):
        store.features("IN05", 1)
    with pytest.raises(SelectionError, match=r"block IN00 has no recorded input in run 'main' \(recorded: none\)"):
        store.features("IN00", 1, which="input")
    with pytest.raises(SelectionError, match=r"no run 'base'"):
        store.run("base")
    with pytest.raises(SelectionError, match="image 2 out of range 0..1"):
        store.features("IN00", 1, image=2)


def test_missing_foreign_and_newer_stores_are_refused(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no store at"):
        dumpunet.open(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a store directory"):
        dumpunet.open(tmp_path / "file")
    with pytest.raises(StoreError, match=r"not a zarr v3 store \(no zarr.json\)"):
        dumpunet.open(tmp_path)
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="is a zarr store but not a dumpunet store"):
        dumpunet.open(foreign)
    newer = tmp_path / "newer.zarr"
    write_store(newer)
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["dumpunet"]["format_version"] = schema.FORMAT_VERSION + 1
    (newer / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=rf"store format version {schema.FORMAT_VERSION + 1}, newer than this dumpunet reads \(version {schema.FORMAT_VERSION}\)"):
        dumpunet.open(newer)


def test_writer_refuses_to_clobber(tmp_path):
    p = tmp_path / "s.zarr"
    write_store(p)
    with pytest.raises(RecordError, match="already exists; choose another --out or pass --overwrite"):
        StoreWriter(p, model={}, versions={})
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(RecordError, match="exists and is not a dumpunet store"):
        StoreWriter(other, model={}, versions={}, overwrite=True)
    assert (other / "thesis.tex").read_text() == "do not delete"
    StoreWriter(p, model={}, versions={}, overwrite=True).close()
    assert not (p / "runs").exists()


def test_validate_finds_a_missing_chunk_and_a_wrong_dim(tmp_path):
    p = tmp_path / "s.zarr"
    write_store(p)
    os.remove(p / "runs/main/blocks/IN01/output/c.1.0.1.0.0.0")
    meta_path = p / "runs/main/blocks/IN00/output/zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["dimension_names"][3] = "chan"
    meta_path.write_text(json.dumps(meta))
    report = validate(p)
    assert report.problems == [
        "runs/main/blocks/IN00/output: dimension names ('call', 'image', 'guidance', 'chan', 'y', 'x'), "
        "expected ('call', 'image', 'guidance', 'channel', 'y', 'x')",
        "runs/main/blocks/IN01/output: call 1 (step 2) is complete but 1 of its chunk(s) are missing",
    ]


def test_disk_full_keeps_complete_steps_readable(tmp_path, monkeypatch):
    from dumpunet.store import call_arrays

    p = tmp_path / "s.zarr"
    budget = {"chunks": 2 * 8 + 3}  # two full calls (2 blocks x 2 images x 2 halves) and a bit of the third

    def full_disk(file, mode="r", *a, **kw):
        if "w" in mode and "/blocks/" in str(file) and "/c." in str(file):
            if budget["chunks"] == 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            budget["chunks"] -= 1
        return open(file, mode, *a, **kw)

    monkeypatch.setattr(call_arrays, "open", full_disk, raising=False)
    with pytest.raises(RecordError) as err:
        write_store(p, steps=5)
    assert str(err.value).startswith(f"disk full while writing {p}; complete steps stay readable (main: steps 1-2)")
    monkeypatch.undo()
    store = dumpunet.open(p)
    assert store.steps == [1, 2]
    np.testing.assert_array_equal(store.features("IN01", 2), slab(2, BLOCKS[1])[1, 0])
    with pytest.raises(IncompleteStepError, match=r"step 3 was not completely written \(the recording was interrupted\); complete steps: 1-2"):
        store.features("IN00", 3)
    report = validate(p)
    assert report.ok, report.problems
    assert "run main: recording did not finish" in report.notes


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_store import BLOCKS, slab
    from dumpunet.store.schema import RunAttrs
    from dumpunet.store.writer import StoreWriter
    w = StoreWriter({path!r}, model={{}}, versions={{}})
    w.set_block_table(BLOCKS)
    w.begin_run("main", RunAttrs(n_images=2, guidance=("uncond", "cond"), steps=10000), BLOCKS,
                which=("output",), dtype="float16")
    for s in range(1, 10000):
        w.submit_call("main", step=s, substep=0, timestep=0.0, slabs={{(b.name, "output"): slab(s, b) for b in BLOCKS}})
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL])
def test_kill_mid_write_leaves_a_sound_store(tmp_path, sig):
    p = tmp_path / "k.zarr"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), path=str(p))
    from waiting import BACKSTOP, wait_until  # here: the child imports this module from tests/store alone

    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        done = p / "runs/main/call_done"
        wait_until(lambda: (done / "c.0").exists() and zarr.open_array(done, mode="r").shape[0] > 5, proc=proc,
                   what="6 written calls")
        proc.send_signal(sig)
    finally:
        proc.wait(BACKSTOP)
    store = dumpunet.open(p)
    steps = store.steps
    assert len(steps) >= 5 and steps == list(range(1, len(steps) + 1))
    for s in (1, steps[-1]):
        np.testing.assert_array_equal(store.features("IN01", s, image=1), slab(s, BLOCKS[1])[1, 1])
    report = validate(p)
    assert report.ok, report.problems
    assert not store.run().complete


def test_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    p = tmp_path / "s.zarr"
    write_store(p)
    for f in (p / "runs/main/blocks/IN01/output/zarr.json", p / "runs/main/call_done/c.0", p / "runs/main/blocks/IN01/output/c.0.0.0.0.0.0"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f

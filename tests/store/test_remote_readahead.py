"""Reading ahead from a store at a URL (dumpunet.store.readahead), against moto on 127.0.0.1.

A render or export from S3 requests the next grids' chunks while one is drawn. The tests count
the server's requests: each chunk a render needs is requested exactly as often as its reads
need it (once; twice where the Auto first pass reads every map before the drawing does), no
chunk beyond the selection, the files equal the local render's byte for byte, and a missing or
truncated chunk, or a failing request, is reported exactly as from the local folder.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from synthetic_stores import make_store

import dumpunet
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.selection import select
from dumpunet.cli import main
from dumpunet.errors import DamagedChunkError, OptionError
from dumpunet.store import readahead
from dumpunet.store.chunks import ChunkFiles, read_chunk
from dumpunet.store.readahead import ChunkRef, read_ahead

BLOCKS, STEPS = "IN00-IN04,OUT08-OUT11", "1,5,20"
CALL = {1: 0, 5: 1, 10: 2, 20: 3}  # the synthetic store records steps 1, 5, 10, 20: calls 0-3
GUIDANCE = ("uncond", "cond")
NAME = "girl.zarr"


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """A synthetic store of 2 images, read-only."""
    return make_store(tmp_path_factory.mktemp("ahead") / NAME, n_images=2)


def upload(s3, local: Path, name: str = NAME) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint, skip_instance_cache=True)
    fs.put(str(local), f"{s3.bucket}/{name}", recursive=True)
    return f"s3://{s3.bucket}/{name}"


def chunk_requests(s3, name: str = NAME) -> Counter[tuple[str, str]]:
    """(method, key below the store) of every request the server answered for a block's chunk."""
    prefix = f"/{s3.bucket}/{name}/"
    return Counter((r.method, r.path.removeprefix(prefix)) for r in s3.log()
                   if r.path.startswith(prefix) and "/blocks/" in r.path and not r.path.endswith("zarr.json"))


def needed(blocks: list[str], steps: list[int], images: range, guidance: tuple[str, ...]) -> set[str]:
    """The chunk keys of those maps, spelled out: runs/main/blocks/B/output/c.call.image.guidance.0.0.0."""
    return {f"runs/main/blocks/{b}/output/c.{CALL[s]}.{i}.{GUIDANCE.index(g)}.0.0.0"
            for b in blocks for s in steps for i in images for g in guidance}


def cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.stdout, res.stderr


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "manifest.json"}


@pytest.mark.parametrize(("jobs", "window", "extra", "reads"), [
    ("1", None, (), 1),                      # the default window (zarr's async.concurrency)
    ("2", 3, (), 1),                         # two threads, a window smaller than the render
    ("1", 2, ("--transform", "auto01", "--auto-scope", "run"), 2),  # the first pass reads every map, then the drawing
])
def test_a_render_from_s3_requests_each_chunk_as_often_as_it_reads_it(s3, local, tmp_path, monkeypatch, jobs, window,
                                                                      extra, reads):
    """Also with a window smaller than the render, two threads, and the Auto first pass (every chunk read twice)."""
    url = upload(s3, local)
    if window is not None:
        monkeypatch.setitem(zarr.config.config["async"], "concurrency", window)  # zarr's own knob sets the window
        assert readahead.default_window() == window
    args = ["--blocks", BLOCKS, "--steps", STEPS, "--guidance", "both", "--jobs", jobs, "--quiet", *extra]
    code, out, err = cli("render", str(local), *args, "--out", str(tmp_path / "local"))
    assert code == 0, out + err
    s3.clear()
    code, out, err = cli("render", url, *args, "--out", str(tmp_path / "remote"))
    assert code == 0, out + err
    store = dumpunet.open(local)
    want = needed(store.select_blocks(BLOCKS), [1, 5, 20], range(2), GUIDANCE)
    assert len(want) == 9 * 3 * 2 * 2
    assert chunk_requests(s3) == Counter({("GET", key): reads for key in want})
    files = pngs(tmp_path / "local")
    assert len(files) == len(want) and pngs(tmp_path / "remote") == files


def test_an_export_from_s3_requests_each_chunk_once(s3, local, tmp_path):
    url = upload(s3, local)
    args = ["--blocks", "OUT09-OUT11", "--steps", "5,10", "--guidance", "both", "--format", "npy", "--jobs", "2", "--quiet"]
    assert cli("export", str(local), *args, "--out", str(tmp_path / "local"))[0] == 0
    s3.clear()
    assert cli("export", url, *args, "--out", str(tmp_path / "remote"))[0] == 0
    want = needed(["OUT09", "OUT10", "OUT11"], [5, 10], range(2), GUIDANCE)
    assert chunk_requests(s3) == Counter({("GET", key): 1 for key in want})
    assert pngs(tmp_path / "remote") == pngs(tmp_path / "local")


def _wait_for(s3, n: int) -> None:
    """Wait (up to 20 s) until the server has answered n chunk requests."""
    deadline = time.monotonic() + 20
    while sum(chunk_requests(s3).values()) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_read_ahead_requests_a_window_ahead_and_drops_what_was_not_read(s3, local):
    url = upload(s3, local)
    sel = select(dumpunet.open(url), Pick(blocks="OUT11", guidance="both"))
    slabs = list(sel.slabs())
    keys = [f"runs/main/blocks/OUT11/output/c.{s.call}.{s.image}.{s.guidance_index}.0.0.0" for s in slabs]
    s3.clear()
    with read_ahead(slabs, sel.chunks, window=3) as items:
        handed = iter(items)
        assert next(handed) == slabs[0]
        _wait_for(s3, 4)
        assert chunk_requests(s3) == Counter({("GET", k): 1 for k in keys[:4]})  # the first slab and 3 ahead
        local_maps = [dumpunet.open(local).features("OUT11", s.step, image=s.image, guidance=s.guidance) for s in slabs]
        for slab, x in zip(slabs[:4], local_maps, strict=False):
            assert (sel.read(slab) == x).all()
        assert sum(chunk_requests(s3).values()) == 4  # read from what was requested ahead
        assert next(handed) == slabs[1]  # 2 slabs ahead of it were started: one more
        _wait_for(s3, 5)
        assert chunk_requests(s3) == Counter({("GET", k): 1 for k in keys[:5]})
    s3.clear()
    assert (sel.read(slabs[4]) == local_maps[4]).all()  # dropped at the end: read anew
    assert chunk_requests(s3) == Counter({("GET", keys[4]): 1})
    s3.clear()
    with read_ahead(slabs, sel.chunks, window=0) as items:
        assert list(items) == slabs
    time.sleep(0.2)
    assert not chunk_requests(s3)
    with pytest.raises(OptionError, match="at least 0"), read_ahead(slabs, sel.chunks, window=-1):
        pass


def test_reading_a_block_at_one_step_still_transfers_one_chunk_and_local_stores_start_nothing(s3, local):
    url = upload(s3, local)
    store = dumpunet.open(url)
    store.features("OUT11", 5)
    s3.clear()
    store.features("OUT11", 20, guidance="uncond")
    assert [(r.method, r.path.split(f"{NAME}/")[1]) for r in s3.log()] == [("GET", "runs/main/blocks/OUT11/output/c.3.0.0.0.0.0")]
    sel = select(dumpunet.open(local), Pick(blocks="OUT11"))
    assert all(ref.start() is None for slab in sel.slabs() for ref in sel.chunks(slab))


DAMAGED = {  # chunk -> how: the slab IN01 step 5, image 0, cond truncated; OUT11 step 1, image 1, uncond deleted
    "runs/main/blocks/IN01/output/c.1.0.1.0.0.0": "truncate",
    "runs/main/blocks/OUT11/output/c.0.1.0.0.0.0": "delete",
}
CASES = {
    "render": ["render", "{store}", "--blocks", "IN01,OUT11", "--guidance", "both", "--jobs", "1", "--quiet"],
    "render-run-scope": ["render", "{store}", "--blocks", "IN01,OUT11", "--guidance", "both", "--jobs", "2", "--quiet",
                         "--transform", "auto01", "--auto-scope", "run"],
    "render-with-grid": ["render", "{store}", "--blocks", "IN01,OUT11", "--guidance", "both", "--quiet",
                         "--average", "mean", "--with-grid"],
    "render-pca": ["render", "{store}", "--blocks", "IN01,OUT11", "--guidance", "both", "--quiet", "--method", "PCA"],
    "export": ["export", "{store}", "--blocks", "IN01,OUT11", "--guidance", "both", "--format", "bin", "--quiet"],
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, local) -> Path:
    bad = tmp_path_factory.mktemp("damaged") / NAME
    shutil.copytree(local, bad)
    for key, how in DAMAGED.items():
        if how == "truncate":
            (bad / key).write_bytes((bad / key).read_bytes()[:10])
        else:
            (bad / key).unlink()
    return bad


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_chunks_from_s3_are_reported_and_skipped_as_from_the_folder(s3, damaged, tmp_path, name):
    url = upload(s3, damaged)
    results = {}
    for where, label in ((str(damaged), "local"), (url, "remote")):
        args = [a.format(store=where) for a in CASES[name]]
        stop = cli(*args, "--out", str(tmp_path / f"{label}-stop"))
        skip = cli(*args, "--skip-damaged", "--out", str(tmp_path / f"{label}-skip"))
        skip = (skip[0], skip[1], sorted(skip[2].splitlines()))  # export's workers warn in the order they finish
        results[label] = (stop, skip, pngs(tmp_path / f"{label}-skip"))
    (code, out, err), (skip_code, _, skip_err), files = results["remote"]
    assert code == 1 and out == "" and err.startswith("Error: runs/main/blocks/") and err.count("\n") == 1, err
    assert skip_code == 0 and "2 maps skipped: damaged chunks" in skip_err and len(skip_err) == 3 and files
    assert results["remote"] == results["local"]  # the same error, warnings and files


class _Failing(zarr.storage.MemoryStore):
    """A store (not local, so read as a remote one) whose requests for one key fail as a server error would."""

    failing = ""

    async def get(self, key, prototype, byte_range=None):
        if key == self.failing:
            raise OSError("503 Slow Down")
        return await super().get(key, prototype, byte_range)


def test_a_failing_request_started_ahead_is_reported_by_its_read():
    mem = _Failing()
    arr = zarr.create_array(mem, name="a", shape=(4, 3), chunks=(1, 3), dtype="int16", compressors=None, fill_value=0)
    arr[:] = np.arange(12, dtype="int16").reshape(4, 3)
    files = ChunkFiles(mem, "")
    mem.failing = "a/c/2/0"
    message = r"^a: row 2: chunk c/2/0 cannot be read \(OSError: 503 Slow Down\)$"
    with pytest.raises(DamagedChunkError, match=message):
        read_chunk(files, arr, (2, 0), "row 2")
    refs = [ChunkRef(files, arr, (i, 0)) for i in range(4)]
    with read_ahead(range(4), lambda i: [refs[i]], window=4) as rows:
        for i in rows:
            if i == 2:
                with pytest.raises(DamagedChunkError, match=message):  # the same error as the direct read
                    read_chunk(files, arr, (i, 0), f"row {i}")
            else:
                assert (read_chunk(files, arr, (i, 0), f"row {i}") == arr[i:i + 1]).all()
    mem.failing = ""
    assert (read_chunk(files, arr, (2, 0), "row 2") == [[6, 7, 8]]).all()  # nothing of the failure kept


def test_selecting_from_s3_opens_each_array_once_with_the_metadata_requests_overlapping(s3, local):
    url = upload(s3, local)
    store = dumpunet.open(url)
    s3.clear()
    sel = select(store, Pick())
    docs = [r for r in s3.log() if r.path.endswith("/output/zarr.json")]
    prefix = f"/{s3.bucket}/{NAME}/runs/main/blocks/"
    assert Counter(r.path for r in docs) == {f"{prefix}{b}/output/zarr.json": 1 for b in store.blocks}  # once each
    assert sel.blocks == store.blocks and all(r.status == 200 for r in docs)
    assert max(r.in_flight for r in docs) >= 1  # requested concurrently, not one after another
    s3.clear()
    sel.read(next(iter(sel.slabs())))  # the arrays are open: a read requests its chunk, no metadata again
    assert not [r for r in s3.log() if r.path.endswith("zarr.json")]

"""The defensive reader without torch: StoreFiles, SafeLocalStore and the chunk checks of Store reads.

The crafted-store corpus (test_crafted.py) needs a tiny-sd1 recording; these tests hold the same
promises on a store the writer makes directly, so they also run where torch is absent.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from test_store import write_store

import dumpunet
from dumpunet.errors import DamagedChunkError, StoreError
from dumpunet.store.chunks import read_chunk_rows
from dumpunet.store.localfiles import StoreFiles, UnsafeFileError
from dumpunet.store.validate import validate

BLK = "runs/main/blocks/IN01/output"
CHUNK = f"{BLK}/c.1.0.1.0.0.0"  # call 1 (step 2), image 0, cond: 6x4x4 float16
CHUNK_BYTES = 6 * 4 * 4 * 2
WHERE = f"{BLK}: call 1 (step 2), image 0, cond: chunk c.1.0.1.0.0.0"


@pytest.fixture
def store(tmp_path) -> Path:
    p = tmp_path / "s.zarr"
    write_store(p)
    return p


def _replace(path: Path, make) -> None:
    os.remove(path)
    make(path)


def test_store_files_read_regular_files_and_refuse_everything_else(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"abc")
    os.symlink(tmp_path / "d", tmp_path / "dlink")
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero")
    files = StoreFiles(tmp_path)
    assert files.read("d/f") == b"abc" and files.size("d/f") == 3 and files.read("d/missing") is None
    assert files.read("d/f/below") is None  # a file where a folder would be: the key is not there
    for key, what in (("dlink/f", "dlink is a symbolic link"), ("fifo", "fifo is a FIFO"),
                      ("zero", "zero is a symbolic link"), ("d", "d is a folder")):
        with pytest.raises(UnsafeFileError, match=f"^{what}, not a regular file"):
            files.read(key)
    for key in ("../s.zarr/d/f", "d/../d/f", "/etc/passwd", "d//f"):
        with pytest.raises(StoreError, match="is not a key of this store"):
            files.read(key)
    assert list(files.unsafe_entries()) == [("dlink", "a symbolic link"), ("fifo", "a FIFO"), ("zero", "a symbolic link")]


def test_a_fifo_chunk_is_refused_without_blocking(store):
    """Opening a FIFO for reading blocks until a writer comes; the reader must not wait."""
    _replace(store / CHUNK, os.mkfifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            dumpunet.open(store).features("IN01", 2)
        except BaseException as exc:  # noqa: BLE001  handed to the test thread
            outcome.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout=60)
    if t.is_alive():  # unblock the reader so the test process can end, then fail
        with open(store / CHUNK, "wb"):
            pass
        pytest.fail("reading a FIFO chunk blocked")
    assert isinstance(outcome[0], DamagedChunkError)
    assert str(outcome[0]) == f"{WHERE} is a FIFO, not a regular file (not read)"


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:50]), f"{WHERE} is 50 bytes, expected {CHUNK_BYTES} (truncated)"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0"), f"{WHERE} is {CHUNK_BYTES + 1} bytes, expected {CHUNK_BYTES} (oversized)"),
    (os.remove, f"{WHERE} is missing"),
    (lambda p: _replace(p, lambda q: os.symlink("/dev/zero", q)), f"{WHERE} is a symbolic link, not a regular file (not read)"),
    (lambda p: _replace(p, Path.mkdir), f"{WHERE} is a folder, not a regular file (not read)"),
])
def test_a_damaged_chunk_of_a_complete_step_is_an_error_naming_array_call_and_step(store, damage, message):
    damage(store / CHUNK)
    s = dumpunet.open(store)
    with pytest.raises(DamagedChunkError) as err:
        s.features("IN01", 2)
    assert str(err.value) == message
    assert s.features("IN01", 2, guidance="uncond").shape == (6, 4, 4)  # the other half reads
    assert not validate(store).ok


def test_a_link_to_a_file_of_exactly_the_chunk_size_is_not_read(store, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x7b" * CHUNK_BYTES)
    _replace(store / CHUNK, lambda p: os.symlink(secret, p))
    with pytest.raises(DamagedChunkError, match="is a symbolic link"):
        dumpunet.open(store).features("IN01", 2)
    assert f"problem: {CHUNK} is a symbolic link" in "\n".join(f"problem: {p}" for p in validate(store).problems)


def test_a_linked_root_document_is_refused(store, tmp_path):
    os.replace(store / "zarr.json", tmp_path / "root.json")
    os.symlink(tmp_path / "root.json", store / "zarr.json")
    with pytest.raises(StoreError, match=r"zarr.json is a symbolic link, not a regular file"):
        dumpunet.open(store)


def test_the_store_path_itself_may_be_a_link(store, tmp_path):
    os.symlink(store, tmp_path / "alias.zarr")
    assert dumpunet.open(tmp_path / "alias.zarr").features("IN01", 2).shape == (6, 4, 4)
    assert validate(tmp_path / "alias.zarr").ok


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.__setitem__("shape", [10**12]), "runs/main/call_done: claims 1000000000000 calls but holds 1 chunk(s) of 64 calls"),
    (lambda d: d.__setitem__("data_type", "float64"),
     "runs/main/call_done: chunk c.0 is 64 bytes, expected 512 (truncated) (damaged call table)"),
])
def test_a_call_table_is_checked_against_its_files_before_it_is_read(store, edit, message):
    meta = store / "runs/main/call_done/zarr.json"
    doc = json.loads(meta.read_text())
    edit(doc)
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError) as err:
        _ = dumpunet.open(store).steps
    assert str(err.value) == f"{store}: {message}"


def test_a_claimed_chunk_larger_than_a_reader_allocates_is_refused(store):
    meta = store / BLK / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][3:] = doc["chunk_grid"]["configuration"]["chunk_shape"][3:] = [6, 10**6, 10**6]
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=r"runs/main/blocks/IN01/output: shape \(3, 2, 2, 6, 1000000, 1000000\) claims "
                                          r"chunks of 12.00 TB, more than a reader allocates"):
        dumpunet.open(store).features("IN01", 2)


def _rows(store: Path, scratch_bytes: int) -> list[tuple[int, np.ndarray]]:
    """IN01's chunk of step 2 (cond) through read_chunk_rows, copied block by block (each view is reused)."""
    run = dumpunet.open(store).run()
    arr = run.array("IN01", "output")
    coords = run.slab_chunk(arr, 1, 0, 1).coords
    scratch = np.empty(scratch_bytes, np.uint8)
    return [(first, rows.copy()) for first, rows in read_chunk_rows(run.store.files, arr, coords,
                                                                   "call 1 (step 2), image 0, cond", scratch)]


@pytest.mark.parametrize("scratch_bytes, firsts", [(3 * 8, [0, 3, 6, 9, 12, 15, 18, 21]), (5 * 8 + 7, [0, 5, 10, 15, 20]),
                                                   (4, [0]), (1 << 20, [0])])
def test_chunk_rows_come_in_blocks_of_whole_rows_that_make_the_chunk(store, scratch_bytes, firsts):
    # rows of the last axis (4 float16 = 8 bytes); a scratch smaller than a row reads the chunk whole
    blocks = _rows(store, scratch_bytes)
    assert [first for first, _ in blocks] == firsts
    np.testing.assert_array_equal(np.concatenate([rows for _, rows in blocks]),
                                  dumpunet.open(store).features("IN01", 2).reshape(-1, 4))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:50]), f"{WHERE} is 50 bytes, expected {CHUNK_BYTES} (truncated)"),
    (os.remove, f"{WHERE} is missing"),
    (lambda p: _replace(p, lambda q: os.symlink("/dev/zero", q)), f"{WHERE} is a symbolic link, not a regular file (not read)"),
])
def test_a_damaged_chunk_read_in_rows_is_the_same_error(store, damage, message):
    damage(store / CHUNK)
    with pytest.raises(DamagedChunkError) as err:
        _rows(store, 24)
    assert str(err.value) == message


def test_a_chunk_cut_while_its_rows_are_read_is_an_error(store):
    files = StoreFiles(store)
    blocks = files.read_blocks(CHUNK, CHUNK_BYTES, np.empty(64, np.uint8))
    first = next(blocks).copy()
    (store / CHUNK).write_bytes((store / CHUNK).read_bytes()[:100])  # in place, as a writer rewriting it would
    with pytest.raises(StoreError, match=f"{CHUNK} ended at 100 bytes while it was read, expected {CHUNK_BYTES} \\(truncated\\)"):
        list(blocks)
    assert len(first) == 64

"""The store writer's queue: bounded with back-pressure, the time callers waited, parallel chunk writes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import dumpunet
from dumpunet.store.schema import BlockInfo, RunAttrs
from dumpunet.store.writer import StoreWriter

from test_store import BLOCKS, slab, write_store


def _writer(path, **kw) -> StoreWriter:
    w = StoreWriter(path, model={}, versions={}, **kw)
    w.set_block_table(BLOCKS)
    w.begin_run("main", RunAttrs(n_images=2, guidance=("uncond", "cond"), steps=3), BLOCKS, which=("output",), dtype="float16")
    w.flush()
    return w


def _slabs(step: int) -> dict:
    return {(b.name, "output"): slab(step, b) for b in BLOCKS}


def test_a_full_queue_blocks_the_caller_until_the_writer_catches_up_and_counts_the_wait(tmp_path):
    size = sum(s.nbytes for s in _slabs(1).values())
    w = _writer(tmp_path / "s.zarr", max_queue_bytes=size)  # room for one call
    release, held = threading.Event(), threading.Event()

    def slow_slab():  # the writer thread holds here, as on a disk that does not keep up
        held.set()
        release.wait()
        return slab(1, BLOCKS[0])

    w.submit_call("main", step=1, substep=0, timestep=0.0, slabs={**_slabs(1), ("IN00", "output"): slow_slab}, nbytes=size)
    assert held.wait(10)
    second = threading.Thread(target=lambda: w.submit_call("main", step=2, substep=0, timestep=0.0, slabs=_slabs(2)))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # back-pressure: the second call waits while the first fills the queue
    assert w.queue_bytes == size and w.waited_seconds == 0.0  # still waiting: not counted yet
    release.set()
    second.join(10)
    assert not second.is_alive()
    w.finish_run("main")
    w.close()
    assert w.waited_seconds >= 0.3 and w.peak_queue_bytes == size  # never more than the bound waited
    store = dumpunet.open(tmp_path / "s.zarr")
    assert store.steps == [1, 2]
    np.testing.assert_array_equal(store.features("IN01", 2), slab(2, BLOCKS[1])[1, 0])


def test_an_unbounded_wait_never_happens_for_a_lone_call_larger_than_the_bound(tmp_path):
    w = _writer(tmp_path / "s.zarr", max_queue_bytes=1)
    w.submit_call("main", step=1, substep=0, timestep=0.0, slabs=_slabs(1))  # bigger than the bound: goes through alone
    w.finish_run("main")
    w.close()
    assert dumpunet.open(tmp_path / "s.zarr").steps == [1]


@pytest.mark.parametrize("kw", [{"write_threads": 3}, {"direct_io": True}, {"write_threads": 2, "direct_io": True},
                                {"write_back": False}, {"write_threads": 1, "write_back": False}])
def test_every_write_variant_writes_the_same_files(tmp_path, monkeypatch, kw):
    import dumpunet.store.writer as writer_module

    write_store(tmp_path / "a.zarr")
    monkeypatch.setattr(writer_module.StoreWriter, "__init__", _with_defaults(writer_module.StoreWriter.__init__, kw))
    write_store(tmp_path / "b.zarr")
    a, b = _files(tmp_path / "a.zarr"), _files(tmp_path / "b.zarr")
    assert a.keys() == b.keys() and len(a) > 20
    assert all(a[k] == b[k] for k in a if not k.endswith("zarr.json") or "runs/main/blocks" in k)


@pytest.mark.parametrize("write_back", [True, False])
def test_early_write_back_hands_every_chunk_file_to_the_disk_once_and_nothing_else(tmp_path, monkeypatch, write_back):
    import os

    from dumpunet.store import call_arrays

    calls = []
    monkeypatch.setattr(call_arrays, "_FADVISE", lambda fd, offset, length, advice: calls.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice)))
    w = _writer(tmp_path / "s.zarr", write_back=write_back)
    for step in (1, 2):
        w.submit_call("main", step=step, substep=0, timestep=0.0, slabs=_slabs(step))
    w.finish_run("main")
    w.close()
    chunks = sorted(str(p) for p in (tmp_path / "s.zarr/runs/main/blocks").rglob("output/c.*"))  # not coordinates
    assert len(chunks) == 2 * len(BLOCKS) * 2 * 2  # calls x blocks x images x guidance
    if write_back:
        assert sorted(c[0] for c in calls) == chunks  # each chunk file once, no call table or document
        assert {c[1:] for c in calls} == {(0, 0, os.POSIX_FADV_DONTNEED)}
    else:
        assert calls == []
    np.testing.assert_array_equal(dumpunet.open(tmp_path / "s.zarr").features("IN01", 2), slab(2, BLOCKS[1])[1, 0])


def test_write_threads_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="write_threads must be at least 1, got 0"):
        StoreWriter(tmp_path / "s.zarr", model={}, versions={}, write_threads=0)


def _with_defaults(init, kw):
    def patched(self, *a, **k):
        init(self, *a, **{**kw, **k})

    return patched


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_timestep_can_come_as_a_callable_the_writer_resolves(tmp_path):
    w = _writer(tmp_path / "s.zarr")
    resolved = []
    w.submit_call("main", step=1, substep=0, timestep=lambda: resolved.append(1) or 875.5, slabs=_slabs(1))
    w.finish_run("main")
    w.close()
    assert resolved == [1]
    assert dumpunet.open(tmp_path / "s.zarr").run().calls.timestep.tolist() == [875.5]


PAGE_BLOCK = BlockInfo("IN00", "conv_in", ("conv_in",), "conv_in", (8, 16, 16), (8, 16, 16), False)  # 4096-byte chunks


def _page_store(path, slabs, monkeypatch, opener):
    from dumpunet.store import call_arrays

    monkeypatch.setattr(call_arrays, "_no_direct", set())
    monkeypatch.setattr(call_arrays, "_direct_opener", opener)
    w = StoreWriter(path, model={}, versions={}, direct_io=True)
    w.set_block_table([PAGE_BLOCK])
    w.begin_run("main", RunAttrs(n_images=2, guidance=("uncond", "cond"), steps=2), [PAGE_BLOCK], which=("output",), dtype="float16")
    for s, x in enumerate(slabs, 1):
        w.submit_call("main", step=s, substep=0, timestep=0.0, slabs={("IN00", "output"): x})
    w.finish_run("main")
    w.close()
    return dumpunet.open(path)


def _unaligned_slabs():
    rng = np.random.default_rng(3)
    n = 2 * 2 * 8 * 16 * 16
    raw = rng.standard_normal(2 * n + 3).astype(np.float16)
    return [raw[1 + k * n : 1 + (k + 1) * n].reshape(2, 2, 8, 16, 16) for k in range(2)]  # off the page grid


def test_page_sized_chunks_are_written_directly_even_from_unaligned_memory(tmp_path, monkeypatch):
    from dumpunet.store import call_arrays

    opened = []
    real = call_arrays._direct_opener

    def spy(path, flags):
        opened.append(path)
        return real(path, flags)

    slabs = _unaligned_slabs()
    store = _page_store(tmp_path / "s.zarr", slabs, monkeypatch, spy)
    assert len(opened) == 2 * 2 * 2 or (len(opened) == 1 and call_arrays._no_direct)  # else: this file system refuses O_DIRECT
    for s, x in enumerate(slabs, 1):
        for g, i in (("uncond", 0), ("cond", 1)):
            np.testing.assert_array_equal(store.features("IN00", s, image=i, guidance=g), x[int(g == "cond"), i])


def test_a_file_system_that_refuses_direct_writes_gets_the_page_cache(tmp_path, monkeypatch):
    import errno

    from dumpunet.store import call_arrays

    refused = []

    def refuse(path, flags):
        refused.append(path)
        raise OSError(errno.EINVAL, "Invalid argument")

    slabs = _unaligned_slabs()
    store = _page_store(tmp_path / "s.zarr", slabs, monkeypatch, refuse)
    assert len(refused) == 1 and call_arrays._no_direct == {(tmp_path / "s.zarr").stat().st_dev}  # asked once
    np.testing.assert_array_equal(store.features("IN00", 2, image=1, guidance="cond"), slabs[1][1, 1])


def _run(w: StoreWriter, name: str, steps: int, *, finish: bool) -> None:
    w.begin_run(name, RunAttrs(prompt=name, n_images=2, guidance=("uncond", "cond"), steps=2), BLOCKS, which=("output",),
                dtype="float16")
    for s in range(1, steps + 1):
        w.submit_call(name, step=s, substep=0, timestep=1000.0 - s, slabs=_slabs(s))
    if finish:
        w.finish_run(name, images=np.full((2, 16, 16, 3), 7, np.uint8))


def test_keep_runs_reopens_a_store_dropping_the_other_runs_and_adds_new_ones(tmp_path):
    from dumpunet.store.schema import PromptListInfo
    from dumpunet.store.validate import validate

    path = tmp_path / "s.zarr"
    listed = PromptListInfo(source="p.txt", count=3, sha256="ab", seed=1)
    w = StoreWriter(path, model={"name": "unit"}, versions={}, prompt_list=listed)
    w.set_block_table(BLOCKS)
    _run(w, "p0000", 2, finish=True)
    _run(w, "p0001", 1, finish=False)  # cut off after its first step
    w.close()
    (path / "runs" / "p0002").mkdir()  # a run folder a kill left before the root listed it
    before = dumpunet.open(path).run("p0000").features("IN01", 2)

    w = StoreWriter(path, model={"name": "other"}, versions={}, keep_runs=["p0000"])
    w.set_block_table(BLOCKS)
    _run(w, "p0001", 2, finish=True)
    w.close()
    store = dumpunet.open(path)
    assert store.run_names == ["p0000", "p0001"]
    assert sorted(p.name for p in (path / "runs").iterdir()) == ["p0000", "p0001", "zarr.json"]
    assert (store.info.prompt_list, store.info.model) == (listed, {"name": "unit"})  # the root stays as it was
    assert [(r.complete, r.steps) for r in store.runs.values()] == [(True, [1, 2]), (True, [1, 2])]
    np.testing.assert_array_equal(store.run("p0000").features("IN01", 2), before)
    assert validate(path).ok
    with pytest.raises(dumpunet.errors.RecordError, match="cannot keep run 'p0009', which the store does not list"):
        StoreWriter(path, model={}, versions={}, keep_runs=["p0009"])
    assert not (tmp_path / ".s.zarr.lock").exists()  # the refused writer let its lock go

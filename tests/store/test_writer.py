"""The store writer's queue: bounded with back-pressure, the time callers waited, parallel chunk writes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import dumpunet
from dumpunet.store.schema import RunAttrs
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


@pytest.mark.parametrize("kw", [{"write_threads": 3}, {"eager_writeback": False}, {"write_threads": 2, "eager_writeback": False}])
def test_every_write_variant_writes_the_same_files(tmp_path, monkeypatch, kw):
    import dumpunet.store.writer as writer_module

    write_store(tmp_path / "a.zarr")
    monkeypatch.setattr(writer_module.StoreWriter, "__init__", _with_defaults(writer_module.StoreWriter.__init__, kw))
    write_store(tmp_path / "b.zarr")
    a, b = _files(tmp_path / "a.zarr"), _files(tmp_path / "b.zarr")
    assert a.keys() == b.keys() and len(a) > 20
    assert all(a[k] == b[k] for k in a if not k.endswith("zarr.json") or "runs/main/blocks" in k)


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

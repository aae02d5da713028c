"""Host copies of captured tensors: reused buffers; the GPU path never synchronizes in a hook (by fakes)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dumpunet.recorder import buffers  # noqa: E402
from dumpunet.recorder.buffers import Capture  # noqa: E402

pytestmark = pytest.mark.recorder


def test_cpu_copies_are_taken_at_once_and_later_changes_do_not_reach_them():
    cap = Capture(torch.float16, n_guidance=2, n_images=1, buffers=buffers.HostBuffers(1 << 20))
    cap.start_call({("IN00", "output"): (3, 2)})
    t = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    cap.add(("IN00", "output"), t)
    t.add_(100)
    slabs, nbytes, on_written = cap.take_call()
    np.testing.assert_array_equal(slabs[("IN00", "output")], np.arange(12, dtype=np.float16).reshape(2, 1, 3, 2))
    assert nbytes == 12 * 2


class _Log(list):
    def __call__(self, *what):
        self.append(what)


class _FakeCuda:
    """Stands in for torch.cuda: streams, events and synchronize, logging every call."""

    def __init__(self, log: _Log) -> None:
        self.log = log
        cuda = self

        class Stream:
            def __init__(self, device=None):
                log("new stream", device)

            def wait_stream(self, other):
                log("side waits for", other)

            def synchronize(self):
                log("SYNC stream")

        class Event:
            def record(self, stream=None):
                log("event recorded on", type(stream).__name__)

            def synchronize(self):
                log("event waited")

        class StreamContext:
            def __init__(self, stream):
                self.stream = stream

            def __enter__(self):
                log("enter side stream")

            def __exit__(self, *exc):
                log("leave side stream")

        self.Stream, self.Event = Stream, Event
        self.stream = StreamContext
        self.current_stream = lambda device=None: "compute stream"
        self.synchronize = lambda device=None: cuda.log("SYNC device")


class _FakeGpuTensor:
    """A tensor 'on the GPU': what the capture path reads of it, logged."""

    is_cuda = True
    device = "cuda:0"

    def __init__(self, data: torch.Tensor, log: _Log) -> None:
        self.data, self.log, self.shape = data, log, data.shape

    def detach(self):
        return self

    def to(self, dtype, copy=False):
        self.log("convert on device", dtype, copy)
        return _FakeConverted(self.data.to(dtype), self.log)


class _FakeConverted(_FakeGpuTensor):
    def record_stream(self, stream):
        self.log("converted kept for", type(stream).__name__)


class _FakeHost:
    def __init__(self, shape, dtype, log):
        self.t, self.log = torch.zeros(shape, dtype=dtype), log

    def copy_(self, src, non_blocking=False):
        self.log("copy to pinned host", non_blocking)
        self.t.copy_(src.data)

    def numel(self):
        return self.t.numel()

    def element_size(self):
        return self.t.element_size()

    def numpy(self):
        return self.t.numpy()


def test_gpu_copies_run_on_a_side_stream_and_only_the_writer_waits_for_their_events(monkeypatch):
    log = _Log()
    monkeypatch.setattr(buffers.torch, "cuda", _FakeCuda(log))
    taken = []

    def take(self, shape, dtype, *, pinned=False):
        taken.append(pinned)
        return _FakeHost(shape, dtype, log)

    monkeypatch.setattr(buffers.HostBuffers, "take", take)
    cap = Capture(torch.float16, n_guidance=2, n_images=1, buffers=buffers.HostBuffers(1 << 20))
    keys = [("IN00", "output"), ("OUT11", "output")]
    cap.start_call({k: (3, 2) for k in keys})
    for i, k in enumerate(keys):
        cap.add(k, _FakeGpuTensor(torch.full((2, 3, 2), float(i)), log))
    hook_side = list(log)
    assert not any(w[0].startswith(("SYNC", "event waited")) for w in hook_side)  # no synchronization in a hook
    assert [w for w in hook_side if w[0] == "new stream"] == [("new stream", "cuda:0")]  # one side stream, reused
    convert = ("convert on device", torch.float16, True)
    per_tensor = [
        ("side waits for", "compute stream"),
        ("enter side stream",),
        ("copy to pinned host", True),
        ("event recorded on", "Stream"),
        ("leave side stream",),
        ("converted kept for", "Stream"),
    ]
    assert hook_side == [convert, ("new stream", "cuda:0"), *per_tensor, convert, *per_tensor]
    assert taken == [True, True]  # pinned host buffers
    slabs, _, _ = cap.take_call()
    log.clear()
    for i, k in enumerate(keys):  # the writer thread
        np.testing.assert_array_equal(slabs[k](), np.full((2, 1, 3, 2), i, np.float16))
    assert log == [("event waited",), ("event waited",)]


def test_host_buffers_start_on_a_page_and_are_reused():
    bufs = buffers.HostBuffers(1 << 20)
    a = bufs.take((2, 320, 7, 7), torch.float16)
    assert a.data_ptr() % 4096 == 0 and a.shape == (2, 320, 7, 7) and a.dtype == torch.float16
    bufs.give_back([a])
    assert bufs.take((2, 320, 7, 7), torch.float16) is a
    assert bufs.take((2, 320, 7, 7), torch.float16) is not a


def test_the_pool_keeps_no_more_than_its_bound_and_makes_room_for_new_shapes():
    small, big = (2, 4, 8, 8), (2, 4, 16, 16)  # 1 KiB and 4 KiB of fp16
    pool = buffers.HostBuffers(3 * 1024)
    a, b, c, d = (pool.take(small, torch.float16) for _ in range(4))  # lent out beyond the bound: allowed
    assert pool.held_bytes == 4096 and pool.fresh_bytes == 4096
    pool.give_back([a, b, c, d])  # only what fits is kept: held never exceeds the bound once given back
    assert pool.held_bytes == 3 * 1024
    kept = [pool.take(small, torch.float16) for _ in range(3)]
    assert len({id(t) for t in kept} & {id(a), id(b), id(c), id(d)}) == 3 and pool.reused_bytes == 3 * 1024
    assert pool.take(small, torch.float16) is not None and pool.fresh_bytes == 5 * 1024  # the fourth is new again
    pool.give_back(kept)  # the fourth stays lent out
    pool.fit(5 * 1024)
    e = pool.take(big, torch.float16)  # free buffers of another shape make room
    assert pool.held_bytes == 5 * 1024 and pool.fresh_bytes == 5 * 1024 + 4096
    pool.give_back([e])
    assert pool.take(big, torch.float16) is e
    pool.fit(1024)  # fit never shrinks
    assert pool.max_bytes == 5 * 1024

"""Host copies of captured tensors: one U-Net call's :class:`Capture`, in buffers reused from call to call.

A recording copies every captured tensor to the host once per U-Net call. Fresh buffers for
each copy cost page faults on every call (and on VMs that hand freed memory back to the host,
first touches are slow: docs/benchmarks.md measured a copy into fresh memory 7x slower than
into reused memory), which shows up as recording overhead; so the recorder takes buffers from a
bounded pool (:class:`HostBuffers`) and the store writer gives them back once a call is on disk.
The same pool serves the CPU path (page-aligned buffers) and the CUDA path (pinned buffers).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dumpunet.errors import RecordError


PAGE = 4096


def _page_aligned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty host tensor starting on a page: the store writer writes such memory to disk directly (O_DIRECT)."""
    nbytes = math.prod(shape) * _itemsize(dtype)
    raw = torch.empty(nbytes + PAGE, dtype=torch.uint8)
    start = -raw.data_ptr() % PAGE
    return raw[start : start + nbytes].view(dtype).view(shape)


class HostBuffers:
    """A bounded pool of reusable host tensors, keyed by shape, dtype and pinning (pinned: copies from a GPU).

    :meth:`take` hands out a tensor given back earlier, else a new one; :meth:`give_back` (the
    store writer's thread, once a call's chunk files are written) returns tensors for reuse. The
    pool keeps at most ``max_bytes`` of host memory, counting what is lent out and what is kept
    free: a tensor given back beyond that is dropped, and free tensors of other shapes and dtypes
    make room for a new one. It never blocks: what is lent out is bounded by the store writer's
    queue (the recorder sizes the pool to that queue's bound plus the call being captured, so a
    recording past its first calls allocates nothing). A tensor is never handed out twice before
    it is given back.

    ``fresh_bytes`` and ``reused_bytes`` count what :meth:`take` allocated and what it reused.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: dict[tuple[tuple[int, ...], torch.dtype, bool], list[torch.Tensor]] = {}
        self._free_bytes = 0
        self._lent_bytes = 0
        self._lock = threading.Lock()
        self.fresh_bytes = 0
        self.reused_bytes = 0

    def fit(self, max_bytes: int) -> None:
        """Keep at least ``max_bytes`` from now on (a pool shared by several recordings fits the largest)."""
        with self._lock:
            self.max_bytes = max(self.max_bytes, max_bytes)

    @property
    def held_bytes(self) -> int:
        """Bytes of the pool's tensors, lent out or free."""
        return self._free_bytes + self._lent_bytes

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, *, pinned: bool = False) -> torch.Tensor:
        """A host tensor of this shape and dtype, reused if one was given back, else new."""
        key = (tuple(shape), dtype, pinned)
        nbytes = math.prod(shape) * _itemsize(dtype)
        with self._lock:
            self._lent_bytes += nbytes
            free = self._free.get(key)
            if free:
                self._free_bytes -= nbytes
                self.reused_bytes += nbytes
                return free.pop()
            self.fresh_bytes += nbytes
            self._evict()
        if pinned:  # CUDA's pinned allocations start on a page already
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        return _page_aligned(shape, dtype)

    def give_back(self, tensors: list[torch.Tensor]) -> None:
        """Return tensors whose contents were written (called from the writer thread)."""
        with self._lock:
            for t in tensors:
                nbytes = t.numel() * t.element_size()
                self._lent_bytes -= nbytes
                if self._free_bytes + self._lent_bytes + nbytes <= self.max_bytes:
                    key = (tuple(t.shape), t.dtype, t.is_pinned())
                    free = self._free.pop(key, [])  # re-inserted last: eviction drops the least recently used first
                    free.append(t)
                    self._free[key] = free
                    self._free_bytes += nbytes

    def _evict(self) -> None:
        """Drop free tensors, of the shapes least recently given back first, until the pool fits its bound (lock held)."""
        for key in list(self._free):
            if self._free_bytes + self._lent_bytes <= self.max_bytes:
                return
            for t in self._free.pop(key):
                self._free_bytes -= t.numel() * t.element_size()


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class DeviceCopies:
    """Copies of GPU tensors to pinned host buffers on a side stream, each with an event to wait for.

    The U-Net's stream never waits for the host: the tensor is converted to the store dtype on the
    device (a fresh device tensor, so later in-place changes cannot reach the copy), the side
    stream waits for that conversion, copies it with ``non_blocking=True`` into a pinned buffer
    and records an event. The writer thread waits for the event alone (:meth:`copy`'s callable);
    nothing here synchronizes a stream or the device.
    """

    def __init__(self) -> None:
        self._streams: dict[Any, Any] = {}

    def _stream(self, device: torch.device) -> Any:
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device=device)
        return stream

    def copy(self, src: torch.Tensor, host: torch.Tensor, dtype: torch.dtype) -> Callable[[], None]:
        """Start copying ``src`` (on a GPU) into ``host`` as ``dtype``; return the wait for the copy."""
        converted = src.to(dtype, copy=True)  # device-side fp16, on the U-Net's stream
        side = self._stream(src.device)
        side.wait_stream(torch.cuda.current_stream(src.device))
        with torch.cuda.stream(side):
            host.copy_(converted, non_blocking=True)
            event = torch.cuda.Event()
            event.record(side)
        converted.record_stream(side)  # the allocator keeps its memory until the side stream is past the copy
        return event.synchronize


class Capture:
    """What one U-Net call stores: host copies of its tensors, each ready once its copy is.

    A CPU tensor is copied (and converted to the store dtype) at once; a GPU tensor is copied
    asynchronously into a pinned buffer (:class:`DeviceCopies`) and handed over as a callable that
    waits for the copy's CUDA event, so the U-Net does not wait for the host. Later in-place
    changes to a captured tensor cannot reach its copy. Host buffers come from ``buffers`` and go
    back to it through :meth:`take_call`'s callback.
    """

    def __init__(self, dtype: torch.dtype, n_guidance: int, n_images: int, *, buffers: HostBuffers) -> None:
        self.dtype = dtype
        self.batch = n_guidance * n_images
        self.rows = (n_guidance, n_images)
        self.expect: dict[tuple[str, str], tuple[int, ...]] = {}  # what this call stores, per-row shapes
        self.slabs: dict[tuple[str, str], np.ndarray | Callable[[], np.ndarray]] = {}
        self.nbytes = 0
        self._buffers = buffers
        self._taken: list[torch.Tensor] = []
        self.device = DeviceCopies()  # the copies of GPU tensors (the recorder's timestep copy too)

    def start_call(self, expect: dict[tuple[str, str], tuple[int, ...]]) -> None:
        """Begin a call that stores the arrays ``expect`` names, with these per-row shapes."""
        self._buffers.give_back(self._taken)
        self.expect, self.slabs, self.nbytes, self._taken = expect, {}, 0, []

    def missing(self) -> list[tuple[str, str]]:
        """Arrays this call should have stored and did not see."""
        return sorted(set(self.expect) - set(self.slabs))

    def add(self, key: tuple[str, str], t: torch.Tensor) -> None:
        """Copy ``t`` (``[batch, *shape]``) as the array ``key`` of this call."""
        expect = self.expect[key]
        if tuple(t.shape[1:]) != expect or t.shape[0] != self.batch:
            raise RecordError(
                f"{key[0]} {key[1]} has shape {tuple(t.shape)}, expected {(self.batch, *expect)} "
                "(this U-Net's structure is not one dumpunet understands)"
            )
        shape = (*self.rows, *expect)
        src = t.detach()
        host = self._buffers.take(tuple(src.shape), self.dtype, pinned=src.is_cuda)
        self._taken.append(host)
        self.nbytes += host.numel() * host.element_size()
        if not src.is_cuda:
            host.copy_(src)
            self.slabs[key] = host.numpy().reshape(shape)
            return
        wait = self.device.copy(src, host, self.dtype)

        def ready() -> np.ndarray:  # called by the writer thread
            wait()
            return host.numpy().reshape(shape)

        self.slabs[key] = ready

    def take_call(self) -> tuple[dict[tuple[str, str], np.ndarray | Callable[[], np.ndarray]], int, Callable[[], None]]:
        """This call's slabs and bytes, and the callback that recycles their buffers once written."""
        slabs, nbytes, taken = self.slabs, self.nbytes, self._taken
        self.slabs, self.nbytes, self._taken = {}, 0, []
        return slabs, nbytes, lambda: self._buffers.give_back(taken)

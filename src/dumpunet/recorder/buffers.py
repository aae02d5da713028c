"""Host buffers for captured tensors, reused from call to call.

A recording copies every captured tensor to the host once per U-Net call. Fresh buffers for
each copy cost page faults on every call (and on VMs that hand freed memory back to the host,
first touches are slow), which shows up as recording overhead; so the recorder takes buffers
from this pool and the store writer gives them back once a call is on disk. The pool holds
about as many calls' worth as the writer's queue lets wait.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import torch


class HostBuffers:
    """Reusable host tensors, keyed by shape and dtype (pinned for copies from a GPU)."""

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], torch.dtype, bool], list[torch.Tensor]] = defaultdict(list)
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, *, pinned: bool = False) -> torch.Tensor:
        """A host tensor of this shape and dtype, reused if one was given back, else new."""
        key = (tuple(shape), dtype, pinned)
        with self._lock:
            free = self._free[key]
            if free:
                return free.pop()
        return torch.empty(shape, dtype=dtype, pin_memory=pinned)

    def give_back(self, tensors: list[torch.Tensor]) -> None:
        """Return tensors whose contents were written (called from the writer thread)."""
        with self._lock:
            for t in tensors:
                self._free[(tuple(t.shape), t.dtype, t.is_pinned())].append(t)

"""Run per-file work on a thread pool: kernels, PNG encoding and writes of many files at once.

Everything heavy in a render runs without the GIL (numba kernels are ``nogil``; deflate, numpy
and file writes release it), so threads scale with cores. Each pool thread runs numba kernels
with one thread of its own (:func:`numba.set_num_threads` is per thread): the pool already fills
every core, and OpenMP's spinning team threads would otherwise take CPU from the encoders.
numba's ``workqueue`` threading layer is not thread-safe; there :func:`kernel_lock` makes
kernel calls take turns while everything else stays parallel.

Examples
--------
>>> done = []
>>> run_parallel(range(5), lambda i: i * i, jobs=2, done=done)
>>> done
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import numba
import numpy as np

from dumpunet.analyzer.grid import tile
from dumpunet.errors import OptionError

__all__ = ["check_jobs", "default_jobs", "kernel_lock", "progress_bar", "run_parallel", "scratch"]

T = TypeVar("T")
R = TypeVar("R")

_THREAD = threading.local()


def default_jobs() -> int:
    """The CPUs this process may use."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def check_jobs(jobs: int | None) -> int:
    """The worker count to use: ``jobs``, or every CPU for None; refuse anything but a whole number >= 1."""
    jobs = default_jobs() if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise OptionError(f"jobs must be a whole number of at least 1, got {jobs!r}")
    return jobs


def progress_bar(total: int, enabled: bool, *, unit: str, desc: str) -> Any:
    """A tqdm bar on stderr (a context manager), silent unless ``enabled``."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit=unit, desc=desc, dynamic_ncols=True)


def scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 array of ``shape`` backed by this thread's reusable buffer ``name``.

    A pool thread allocates each buffer once (growing it when a larger block comes), not per
    file; the buffers go when the pool's threads end.
    """
    size = math.prod(shape)
    bufs = _THREAD.__dict__.setdefault("buffers", {})
    buf = bufs.get(name)
    if buf is None or buf.size < size:
        buf = bufs[name] = np.empty(size, np.uint8)
    return buf[:size].reshape(shape)


def kernel_lock() -> AbstractContextManager[Any]:
    """No lock where numba's threading layer is thread-safe (omp, tbb); a lock on the others."""
    tile(np.zeros((1, 1, 1), np.uint8), 1, 1)  # selects and starts the threading layer
    try:
        layer = numba.threading_layer()
    except ValueError:  # never started: NUMBA_DISABLE_JIT=1 runs the kernels as Python
        layer = "none"
    return nullcontext() if layer in ("omp", "tbb") else threading.Lock()


def _one_kernel_thread() -> None:
    numba.set_num_threads(1)


class _NotStarted(Exception):
    """An item that a pool thread skipped because an earlier one failed (never seen by callers)."""


def run_parallel(
    items: Iterable[T],
    work: Callable[[T], R],
    *,
    jobs: int,
    done: list[R],
    on_done: Callable[[R], None] | None = None,
) -> None:
    """Run ``work`` on every item on ``jobs`` threads, at most ``2*jobs`` at a time; fill ``done`` in order.

    On an error or Ctrl-C (which reaches only the calling thread), items not yet started are
    cancelled (also those a free thread would pick up before the caller hears of the error),
    running ones finish, and ``done`` holds exactly the results of the items whose work
    completed, so the caller can record what was written before re-raising. The error raised is
    the first in item order, as without threads.
    """
    finished: list[R] = []  # appended by the pool threads, which interrupts never reach
    stop = threading.Event()  # set by the first failure: no item starts after it

    def run(item: T) -> R:
        if stop.is_set():
            raise _NotStarted
        try:
            result = work(item)
        except BaseException:
            stop.set()
            raise
        finished.append(result)
        return result

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="dumpunet", initializer=_one_kernel_thread)
    waiting: deque[Future[R]] = deque()

    def collect() -> None:
        result = waiting.popleft().result()
        done.append(result)
        if on_done is not None:
            on_done(result)

    try:
        for item in items:
            waiting.append(pool.submit(run, item))
            while len(waiting) >= 2 * jobs:
                collect()
        while waiting:
            collect()
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        done[:] = finished  # an interrupt can land anywhere above: trust the threads' own record
        raise
    finally:
        pool.shutdown(wait=True)

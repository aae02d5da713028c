"""Where dask work runs: one place that starts a LocalCluster or connects to a running scheduler.

``scheduler`` is the same value for every command that computes on dask (``stats``, and
``render``/``export``/``diff`` with ``--dask``):

- ``"local"``: a :class:`distributed.LocalCluster` of ``jobs`` worker processes (default: every
  CPU), one thread each, bound to 127.0.0.1, without a dashboard; closed when the work is done;
- ``"tcp://HOST:PORT"`` (or ``tls://``, ``inproc://``): an existing dask.distributed cluster,
  whose workers must see the stores (and, for ``stats``, nothing else) at the same paths.

``stats`` also takes ``"threads"`` (dask's threaded scheduler in this process, no client):
:func:`compute_kwargs`. A scheduler that does not answer is one :class:`~dumpunet.errors.OptionError`
before anything is computed or written.

Examples
--------
>>> check_scheduler("tcp://10.0.0.5:8786")
'tcp://10.0.0.5:8786'
>>> check_scheduler("sched", also=("threads",))
Traceback (most recent call last):
dumpunet.errors.OptionError: unknown scheduler 'sched' (valid: threads, local, or an address tcp://HOST:PORT)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dumpunet.errors import OptionError

__all__ = ["ADDRESS_SCHEMES", "check_scheduler", "compute_kwargs", "dask_client", "optional_client"]

ADDRESS_SCHEMES = ("tcp://", "tls://", "inproc://")


def check_scheduler(scheduler: str, *, also: tuple[str, ...] = ()) -> str:
    """Refuse a scheduler that is neither ``"local"``, one of ``also``, nor an address."""
    if scheduler in ("local", *also) or scheduler.startswith(ADDRESS_SCHEMES):
        return scheduler
    raise OptionError(f"unknown scheduler {scheduler!r} (valid: {', '.join((*also, 'local'))}, "
                      "or an address tcp://HOST:PORT)")


@contextmanager
def dask_client(scheduler: str, jobs: int | None) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``scheduler`` (``"local"`` or an address), closed afterwards."""
    check_scheduler(scheduler)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise OptionError("dask needs the dask extra: pip install 'dumpunet[dask]'") from None

    if scheduler == "local":
        from dumpunet.analyzer.pool import check_jobs

        with LocalCluster(n_workers=check_jobs(jobs), threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="5s")
    except (OSError, TimeoutError) as exc:
        raise OptionError(f"no dask scheduler answers at {scheduler} ({type(exc).__name__})") from None
    with client:
        yield client


@contextmanager
def compute_kwargs(scheduler: str, jobs: int | None) -> Iterator[dict[str, Any]]:
    """Keyword arguments of ``dask.compute`` for ``scheduler``: ``"threads"`` or as :func:`dask_client`."""
    if scheduler == "threads":
        yield {"scheduler": "threads", **({"num_workers": jobs} if jobs else {})}
        return
    check_scheduler(scheduler, also=("threads",))
    with dask_client(scheduler, jobs) as client:
        yield {"scheduler": client}


@contextmanager
def optional_client(scheduler: str | None, jobs: int | None) -> Iterator[Any]:
    """None for ``scheduler=None`` (the local thread pool), else :func:`dask_client`'s client."""
    if scheduler is None:
        yield None
        return
    with dask_client(scheduler, jobs) as client:
        yield client

"""Reading a store at a URL: zarr's FsspecStore (s3fs) vs ObjectStore (obstore) vs the local folder.

Run: ``python benchmarks/remote_read.py [--repeat 3] [--images 2] [--window N] [--ahead0] [--server process|thread|both]``
(``--images 5``: 500 grids)

Both remote backends read the same store from the same S3 API server, moto on 127.0.0.1
(tests/store/s3server.py), so the figures compare the clients' overhead per request, not a
network. ``--server process`` (the default) runs moto in a process of its own, as a real S3
server is; ``thread`` runs it in this process (``ThreadedMotoServer``), where its request handling
shares this process's GIL with the drawing; ``both`` measures the two side by side, each with
its own copy of the store. Each backend renders with reading ahead (``--window`` chunks ahead,
default zarr's ``async.concurrency``) and, with ``--ahead0``, also without it
(``readahead.WINDOW = 0``: each grid's chunk requested when it is drawn). Per row, best of ``--repeat``:

open        ``dumpunet.open(url)`` and the call table of the run
reads       every block at every step, one ``features`` call each (one chunk each), in turn
render      ``dumpunet.render`` of every block at every step (one grid each, 1 worker thread)
cpu         CPU seconds of this process per render (median of the renders)
server cpu  CPU seconds of the server process per render (median; a thread server's is in ``cpu``)
requests    HTTP requests the server answered for one render

The renders of all rows are interleaved (every row once, then again ``--repeat`` times), so the
other jobs' load falls on all of them alike. Ratios are against the local folder, measured in the
same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "store"), str(HERE.parent / "tests" / "analyzer")]

from s3server import ENV, S3Process, S3Server  # noqa: E402 - the test server lives with the tests
from synthetic_stores import RECORDED_STEPS, make_store  # noqa: E402

import dumpunet  # noqa: E402
from dumpunet.analyzer.pick import Pick  # noqa: E402
from dumpunet.store import location, readahead  # noqa: E402
from dumpunet.store.location import StoreUrl, locate  # noqa: E402

SERVERS = {"process": S3Process, "thread": S3Server}


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


class Row:
    """One way of reading: where, which backend and server, which read-ahead window (None: the local folder's)."""

    def __init__(self, where: Path | StoreUrl, backend: str, window: int | None, out: Path,
                 server: S3Server | S3Process | None = None) -> None:
        self.where, self.backend, self.window, self.out, self.server = where, backend, window, out, server
        self.renders: list[float] = []
        self.cpu: list[float] = []
        self.server_cpu: list[float] = []

    def use(self) -> None:
        location.BACKEND = self.backend
        readahead.WINDOW = self.window

    def render(self) -> None:
        self.use()
        server_cpu = getattr(self.server, "cpu_seconds", None)
        s0 = server_cpu() if server_cpu else 0.0
        c0, t = time.process_time(), time.perf_counter()
        dumpunet.render(self.where, Pick(), out=self.out / f"r{time.perf_counter_ns()}", jobs=1, progress=False)
        self.renders.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c0)
        if server_cpu:
            self.server_cpu.append(server_cpu() - s0)

    def reads_and_open(self, repeat: int) -> dict[str, float]:
        self.use()
        blocks = dumpunet.open(self.where).blocks

        def open_only() -> None:
            dumpunet.open(self.where).run().calls  # noqa: B018

        def reads() -> None:
            st = dumpunet.open(self.where)
            for b in blocks:
                for s in RECORDED_STEPS:
                    st.features(b, s)

        row = {"open": best(open_only, repeat), "reads": best(reads, repeat)}
        if self.server is not None:
            self.server.clear()
        self.render()
        self.renders.clear(), self.cpu.clear(), self.server_cpu.clear()  # a warm-up, not a round
        row["requests"] = len(self.server.log()) if self.server is not None else None
        return row


def remote_url(server: S3Server | S3Process, backend: str, local: Path) -> StoreUrl:
    """A copy of ``local`` in a fresh bucket of ``server``, as a URL with the options that reach it with ``backend``."""
    from dumpunet.store.transfer import copy_store

    url = f"s3://{server.new_bucket()}/{local.name}"
    location.BACKEND = "fsspec"
    copy_store(local, locate(url, server.options))
    return locate(url, server.options if backend == "fsspec" else server.obstore_options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=2, help="images of the synthetic store: 100 grids each (25 blocks x 4 steps)")
    parser.add_argument("--window", type=int, default=None, help="chunks read ahead (default: zarr's async.concurrency)")
    parser.add_argument("--ahead0", action="store_true", help="also render each backend without reading ahead")
    parser.add_argument("--server", choices=[*SERVERS, "both"], default="process",
                        help="moto in a process of its own (default), in this one, or both side by side")
    args = parser.parse_args()
    os.environ.update(ENV)
    kinds = list(SERVERS) if args.server == "both" else [args.server]
    servers = {kind: SERVERS[kind]() for kind in kinds}
    window = readahead.default_window() if args.window is None else args.window
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = make_store(Path(tmp) / "girl.zarr", n_images=args.images)
            rows = {"local": Row(local, "fsspec", None, Path(tmp))}
            for kind, server in servers.items():
                for backend in ("fsspec", "obstore"):
                    url = remote_url(server, backend, local)
                    for w in (0, window) if args.ahead0 else (window,):
                        name = f"{backend} ahead {w}" + (f", {kind}" if len(servers) > 1 else "")
                        rows[name] = Row(url, backend, w, Path(tmp), server)
            figures = {name: row.reads_and_open(args.repeat) for name, row in rows.items()}  # also compiles, warms
            for i in range(args.repeat):
                for name, row in rows.items():
                    row.render()
                    print(f"round {i + 1}: {name} {row.renders[-1]:.2f} s", file=sys.stderr, flush=True)
            location.BACKEND, readahead.WINDOW = "fsspec", None
            n = len(dumpunet.open(local).blocks) * len(RECORDED_STEPS)
    finally:
        for server in servers.values():
            server.stop()
    for name, row in rows.items():
        figures[name]["render"] = min(row.renders)
    print(f"{n} block x step reads, {n * args.images} grids; moto: {', '.join(kinds)}; best of {args.repeat}; "
          f"seconds (ratio to local); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':26} {'open':>16} {'reads':>16} {'render':>16} {'cpu':>6} {'server':>6} {'requests':>8}  renders")
    base = figures["local"]
    for name, row in figures.items():
        cells = [f"{row[k]:7.3f} ({row[k] / base[k]:5.1f}x)" for k in ("open", "reads", "render")]
        r = rows[name]
        server_cpu = f"{statistics.median(r.server_cpu):6.2f}" if r.server_cpu else f"{'-':>6}"
        requests = "-" if row["requests"] is None else row["requests"]
        every = " ".join(f"{t:.2f}" for t in r.renders)
        print(f"{name:26} {' '.join(f'{c:>16}' for c in cells)} {statistics.median(r.cpu):6.2f} {server_cpu} "
              f"{requests:>8}  {every}")


if __name__ == "__main__":
    main()

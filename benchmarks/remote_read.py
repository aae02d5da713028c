"""Reading a store at a URL: zarr's FsspecStore (s3fs) vs ObjectStore (obstore) vs the local folder.

Run: ``python benchmarks/remote_read.py [--repeat 3] [--images 2] [--window N]`` (``--images 5``: 500 grids)

Both remote backends read the same store from the same S3 API server: moto in server mode on
127.0.0.1 (tests/store/s3server.py), so the figures compare the clients' overhead per request,
not a network. Each backend renders twice: without reading ahead (``readahead.WINDOW = 0``: each
grid's chunk requested when it is drawn, as before read-ahead existed) and with it (``--window``
chunks ahead, default zarr's ``async.concurrency``). Per row, best of ``--repeat``:

open      ``dumpunet.open(url)`` and the call table of the run
reads     every block at every step, one ``features`` call each (one chunk each), in turn
render    ``dumpunet.render`` of every block at every step (one grid each, 1 worker thread)
requests  HTTP requests the server answered for one render

The renders of all rows are interleaved (every row once, then again ``--repeat`` times), so the
other jobs' load falls on all of them alike. Ratios are against the local folder, measured in the
same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "store"), str(HERE.parent / "tests" / "analyzer")]

from s3server import ENV, S3Server  # noqa: E402 - the test server lives with the tests
from synthetic_stores import RECORDED_STEPS, make_store  # noqa: E402

import dumpunet  # noqa: E402
from dumpunet.analyzer.pick import Pick  # noqa: E402
from dumpunet.store import location, readahead  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


class Row:
    """One way of reading: where, which backend, which read-ahead window (None: the local folder's)."""

    def __init__(self, where: str | Path, backend: str, window: int | None, out: Path) -> None:
        self.where, self.backend, self.window, self.out = where, backend, window, out
        self.renders: list[float] = []

    def use(self) -> None:
        location.BACKEND = self.backend
        readahead.WINDOW = self.window

    def render(self) -> float:
        self.use()
        t = time.perf_counter()
        dumpunet.render(self.where, Pick(), out=self.out / f"r{time.perf_counter_ns()}", jobs=1, progress=False)
        return time.perf_counter() - t

    def reads_and_open(self, repeat: int, server: S3Server) -> dict[str, float]:
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
        server.clear()
        self.render()
        row["requests"] = len(server.log())
        return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=2, help="images of the synthetic store: 100 grids each (25 blocks x 4 steps)")
    parser.add_argument("--window", type=int, default=None, help="chunks read ahead (default: zarr's async.concurrency)")
    args = parser.parse_args()
    os.environ.update(ENV)
    server = S3Server()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    os.environ["AWS_ALLOW_HTTP"] = "true"  # obstore: the loopback server speaks plain http
    window = readahead.default_window() if args.window is None else args.window
    with tempfile.TemporaryDirectory() as tmp:
        local = make_store(Path(tmp) / "girl.zarr", n_images=args.images)
        bucket = server.new_bucket()
        url = f"s3://{bucket}/girl.zarr"
        from dumpunet.store.transfer import copy_store

        copy_store(local, url)
        rows = {"local": Row(local, "fsspec", None, Path(tmp))}
        for backend in ("fsspec", "obstore"):
            rows[f"{backend} ahead 0"] = Row(url, backend, 0, Path(tmp))
            rows[f"{backend} ahead {window}"] = Row(url, backend, window, Path(tmp))
        figures = {name: row.reads_and_open(args.repeat, server) for name, row in rows.items()}  # also compiles, warms
        for _ in range(args.repeat):
            for row in rows.values():
                row.renders.append(row.render())
        location.BACKEND, readahead.WINDOW = "fsspec", None
        n = len(dumpunet.open(local).blocks) * len(RECORDED_STEPS)
    for name, row in rows.items():
        figures[name]["render"] = min(row.renders)
    print(f"{n} block x step reads, {n * args.images} grids; best of {args.repeat}; seconds (ratio to local); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':16} {'open':>16} {'reads':>16} {'render':>16} {'requests':>9}  renders")
    base = figures["local"]
    for name, row in figures.items():
        cells = [f"{row[k]:7.3f} ({row[k] / base[k]:5.1f}x)" for k in ("open", "reads", "render")]
        every = " ".join(f"{t:.2f}" for t in rows[name].renders)
        print(f"{name:16} {' '.join(f'{c:>16}' for c in cells)} {row['requests'] if name != 'local' else '-':>9}  {every}")
    server.stop()


if __name__ == "__main__":
    main()

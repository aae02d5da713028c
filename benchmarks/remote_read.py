"""Reading a store at a URL: zarr's FsspecStore (s3fs) vs ObjectStore (obstore) vs the local folder.

Run: ``python benchmarks/remote_read.py [--repeat 3] [--images 2]`` (``--images 5``: 500 grids)

Both remote backends read the same store from the same S3 API server: moto in server mode on
127.0.0.1 (tests/store/s3server.py), so the figures compare the clients' overhead per request,
not a network. Per backend, best of ``--repeat``:

open      ``dumpunet.open(url)`` and the call table of the run
reads     every block at every step, one ``features`` call each (one chunk each), in turn
render    ``dumpunet.render`` of every block at every step (one grid each, 1 worker thread)
requests  HTTP requests the server answered for the reads

Ratios are against the local folder, measured in the same run.
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
from dumpunet.store import location  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(where: str | Path, repeat: int, out: Path, server: S3Server) -> dict[str, float]:
    store = dumpunet.open(where)
    blocks = store.blocks

    def open_only() -> None:
        dumpunet.open(where).run().calls  # noqa: B018

    def reads() -> None:
        st = dumpunet.open(where)
        for b in blocks:
            for s in RECORDED_STEPS:
                st.features(b, s)

    def render() -> None:
        dumpunet.render(where, Pick(), out=out / f"r{time.perf_counter_ns()}", jobs=1, progress=False)

    render()  # numba compiled, caches warm
    row = {"open": best(open_only, repeat), "reads": best(reads, repeat), "render": best(render, repeat)}
    server.clear()
    reads()
    row["requests"] = len(server.log())
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=2, help="images of the synthetic store: 100 grids each (25 blocks x 4 steps)")
    args = parser.parse_args()
    os.environ.update(ENV)
    server = S3Server()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    os.environ["AWS_ALLOW_HTTP"] = "true"  # obstore: the loopback server speaks plain http
    with tempfile.TemporaryDirectory() as tmp:
        local = make_store(Path(tmp) / "girl.zarr", n_images=args.images)
        bucket = server.new_bucket()
        url = f"s3://{bucket}/girl.zarr"
        from dumpunet.store.transfer import copy_store

        copy_store(local, url)
        rows = {"local": measure(local, args.repeat, Path(tmp), server)}
        for backend in ("fsspec", "obstore"):
            location.BACKEND = backend
            rows[backend] = measure(url, args.repeat, Path(tmp), server)
        location.BACKEND = "fsspec"
        n = len(dumpunet.open(local).blocks) * len(RECORDED_STEPS)
    print(f"{n} block x step reads, {n * args.images} grids; best of {args.repeat}; seconds (ratio to local)")
    print(f"{'':8} {'open':>16} {'reads':>16} {'render':>16} {'requests':>9}")
    for name, row in rows.items():
        cells = [f"{row[k]:7.3f} ({row[k] / rows['local'][k]:5.1f}x)" for k in ("open", "reads", "render")]
        print(f"{name:8} {' '.join(f'{c:>16}' for c in cells)} {row['requests'] if name != 'local' else '-':>9}")
    server.stop()


if __name__ == "__main__":
    main()

"""Bulk render of N stores: one process against a 2-worker LocalCluster (``render --dask``), in one run.

No model: ``--stores`` stores of 25 blocks with SD1.5-at-256-like shapes (up to 320 channels,
32x32 at most, cfg on, fp16, ``--steps`` steps, smooth random data) are written by
:class:`StoreWriter`. Then every block, step and guidance half of all of them is rendered as PNG
grids (default colorization, labelled):

- single: ``dumpunet.render(stores, jobs=1)``: one process, one thread;
- pool: ``dumpunet.render(stores, jobs=2)``: the default thread pool on 2 threads;
- dask: ``dumpunet.render(stores, jobs=2, scheduler=address)`` on a ``LocalCluster`` of 2 worker
  processes, one thread each, started once beforehand (its start is printed separately).

One warm-up render of each kind first (numba caches, worker imports). Timings are medians of
``--repeats`` interleaved rounds; the ratio is single time / other time (the rate, × single).
The outputs of all three are compared file for file (they must be identical).

    python benchmarks/dask_render.py --stores 8 --steps 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import dumpunet
from dumpunet.analyzer.pick import Pick
from dumpunet.store.schema import BlockInfo, RunAttrs
from dumpunet.store.writer import StoreWriter

SHAPES = [(f"IN{i:02d}", (320 << min(i // 3, 2), 32 >> (i // 3), 32 >> (i // 3))) for i in range(12)] + [
    ("M00", (1280, 4, 4))] + [(f"OUT{i:02d}", (1280 >> max(0, i // 3 - 1), 4 << (i // 3), 4 << (i // 3)))
                              for i in range(12)]


def make_stores(folder: Path, n: int, steps: int) -> list[Path]:
    blocks = [BlockInfo(b, b.lower(), (b.lower(),), b.lower(), chw, chw, False) for b, chw in SHAPES]
    rng = np.random.default_rng(0)
    paths = []
    for r in range(n):
        p = folder / f"run{r:03d}.zarr"
        w = StoreWriter(p, model={"name": "bench"}, versions={})
        w.set_block_table(blocks)
        w.begin_run("main", RunAttrs(n_images=1, guidance=("uncond", "cond"), steps=steps, width=256, height=256),
                    blocks, which=("output",), dtype="float16")
        for s in range(1, steps + 1):
            w.submit_call("main", step=s, substep=0, timestep=1000.0 - s,
                          slabs={(b, "output"): rng.normal(size=(2, 1, *chw)).astype(np.float16) for b, chw in SHAPES})
        w.close()
        paths.append(p)
    return paths


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stores = make_stores(root, args.stores, args.steps)
        pick = Pick(guidance="both")
        t0 = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
            start = time.perf_counter() - t0
            kinds = {"single (1 thread)": {"jobs": 1}, "pool (2 threads)": {"jobs": 2},
                     "dask (2 workers)": {"jobs": 2, "scheduler": cluster.scheduler_address}}
            times: dict[str, list[float]] = {k: [] for k in kinds}
            outputs = {}
            for rnd in range(args.repeats + 1):  # round 0 warms up
                for i, (kind, kw) in enumerate(kinds.items()):
                    out = root / f"out-{rnd}-{i}"
                    t = time.perf_counter()
                    written = dumpunet.render(stores, pick, out=out, progress=False, **kw)
                    if rnd:
                        times[kind].append(time.perf_counter() - t)
                    outputs[kind] = out
            same = len({tuple(files(o).items()) for o in outputs.values()}) == 1
    n = len(written)
    single = statistics.median(times["single (1 thread)"])
    print(f"{args.stores} stores x {len(SHAPES)} blocks x {args.steps} steps x 2 halves = {n} PNG files; "
          f"LocalCluster start {start:.1f} s (not in the times); outputs identical: {same}")
    print("| | median s | PNG/s | × single |")
    print("| --- | --- | --- | --- |")
    for kind, ts in times.items():
        m = statistics.median(ts)
        print(f"| {kind} | {m:.2f} | {n / m:.1f} | {single / m:.2f} |")


if __name__ == "__main__":
    main()

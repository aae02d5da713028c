"""Measure ``dumpunet stats`` over many tiny runs: chunk reads per chunk, and dask against a plain loop.

No model: ``--runs`` stores of 25 blocks with tiny-sd1-like shapes (32 channels at most, 16x16
at most, cfg on, fp16, ``--steps`` steps) are written by :class:`StoreWriter`, then the block
statistics of every block, step and guidance half are computed:

- plain: one process, a loop over ``store.features`` with the same numpy formulas;
- threads: ``block_stats`` on dask's threaded scheduler (the default);
- cluster: ``block_stats`` on a 2-worker ``LocalCluster`` (one thread each, 127.0.0.1).

Every chunk read is counted (``SafeLocalStore.get`` on block chunk keys, in this process: the
threaded scheduler and an in-process cluster, ``processes=False``), and must equal the number of
chunks selected: each chunk read once. Timings are medians of ``--repeats`` interleaved rounds;
ratios are against plain.

    python benchmarks/stats_reads.py --runs 100 --steps 4
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
from dumpunet.analyzer.stats import block_stats
from dumpunet.store.localfiles import SafeLocalStore
from dumpunet.store.schema import BlockInfo, RunAttrs
from dumpunet.store.writer import StoreWriter

SHAPES = [(f"IN{i:02d}", (32 if i < 4 else 64, 16 >> (i // 3), 16 >> (i // 3))) for i in range(12)] + [
    ("M00", (64, 2, 2))] + [(f"OUT{i:02d}", (64 if i < 8 else 32, 2 << (i // 3), 2 << (i // 3))) for i in range(12)]


def make_runs(folder: Path, runs: int, steps: int) -> list[Path]:
    blocks = [BlockInfo(n, n.lower(), (n.lower(),), n.lower(), chw, chw, False) for n, chw in SHAPES]
    rng = np.random.default_rng(0)
    paths = []
    for r in range(runs):
        p = folder / f"run{r:03d}.zarr"
        w = StoreWriter(p, model={"name": "bench"}, versions={})
        w.set_block_table(blocks)
        w.begin_run("main", RunAttrs(n_images=1, guidance=("uncond", "cond"), steps=steps), blocks, which=("output",),
                    dtype="float16")
        for s in range(1, steps + 1):
            w.submit_call("main", step=s, substep=0, timestep=1000.0 - s,
                          slabs={(n, "output"): rng.normal(size=(2, 1, *chw)).astype(np.float16) for n, chw in SHAPES})
        w.close()
        paths.append(p)
    return paths


def plain(paths: list[Path]) -> int:
    rows = 0
    for p in paths:
        store = dumpunet.open(p)
        for block in store.run().recorded():
            for step in store.steps:
                for g in ("uncond", "cond"):
                    x = store.features(block, step, guidance=g).astype(np.float64)
                    stats = (x.mean((1, 2)), x.std((1, 2)), np.abs(x).max((1, 2)), np.sqrt((x * x).sum((1, 2))))
                    rows += len(stats[0])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from distributed import LocalCluster

    reads: list[tuple[str, str]] = []
    orig = SafeLocalStore.get

    async def spy(self, key, *a, **kw):
        if "/blocks/" in key and "/c." in key:
            reads.append((str(self.root), key))
        return await orig(self, key, *a, **kw)

    SafeLocalStore.get = spy  # type: ignore[method-assign]
    pick = Pick(guidance="both")
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        paths = make_runs(Path(tmp), args.runs, args.steps)
        chunks = args.runs * len(SHAPES) * args.steps * 2
        times: dict[str, list[float]] = {"plain": [], "threads": [], "cluster": []}
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1", protocol="tcp",
                          dashboard_address=None) as cluster:
            for _ in range(args.repeats):
                for name in times:
                    reads.clear()
                    t0 = time.perf_counter()
                    if name == "plain":
                        n = plain(paths)
                    else:
                        rows, _ = block_stats(paths, pick, scheduler="threads" if name == "threads"
                                              else cluster.scheduler_address)
                        n = len(rows)
                    times[name].append(time.perf_counter() - t0)
                    if name != "plain":
                        print(f"{name}: {n} rows, {len(reads)} chunk reads of {chunks} chunks "
                              f"({len(set(reads))} distinct): {len(reads) / chunks:.2f} reads per chunk")
    base = statistics.median(times["plain"])
    print(f"\n{args.runs} runs x 25 blocks x {args.steps} steps x 2 halves = {chunks} chunks; medians of {args.repeats}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:8} {m:7.2f} s   {base / m:5.2f}x plain")


if __name__ == "__main__":
    main()

"""Measure how fast StoreWriter stores SD1.5 block outputs, next to the disk's own write speed.

No model: 25 blocks with the SD1.5 shapes at 512x512 (batch 2 = 1 image x uncond/cond, fp16,
~68 MB per step) go through :class:`StoreWriter` for ``--steps`` steps, as fast as it takes them.
The data is "smooth random" (low-pass filtered noise plus some white noise, per-channel scale and
offset), so compressors see what they see on real activations (zstd-1: ~1.08x on both). It is
generated before timing; a few variants per block are reused.

Both sides pay for durability the same way. Writer: wall time from the first ``submit_call`` to
``close()`` plus ``os.sync()`` (one writeback of all the store's files). Disk: ``write`` + ``fsync``
of the same byte count to one file in the same directory. The two alternate ``--repeats`` times;
medians are reported with the min-max spread. Before each timed run ``--prewarm`` GB of memory is
touched: on the VMs we use, freed guest memory goes back to the host and its first touch runs at
0.5-1 GB/s, which otherwise swamps both sides at random (disk 0.4-1.9 GB/s instead of ~1.6).

    python benchmarks/writer_throughput.py --repeats 5
    python benchmarks/writer_throughput.py --compare --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from dumpunet.diskspeed import measure_write_speed
from dumpunet.store import schema
from dumpunet.store.schema import BlockInfo, RunAttrs
from dumpunet.store.writer import (
    DIRECT_IO,
    GROW_CALLS,
    WRITE_BACK,
    WRITE_THREADS,
    StoreWriter,
)

SD15_512 = [
    *[(f"IN{i:02d}", (320, 64, 64)) for i in range(3)],
    ("IN03", (320, 32, 32)),
    *[(f"IN{i:02d}", (640, 32, 32)) for i in (4, 5)],
    ("IN06", (640, 16, 16)),
    *[(f"IN{i:02d}", (1280, 16, 16)) for i in (7, 8)],
    *[(f"IN{i:02d}", (1280, 8, 8)) for i in (9, 10, 11)],
    ("M00", (1280, 8, 8)),
    *[(f"OUT{i:02d}", (1280, 8, 8)) for i in (0, 1)],
    *[(f"OUT{i:02d}", (1280, 16, 16)) for i in (2, 3, 4)],
    ("OUT05", (1280, 32, 32)),
    *[(f"OUT{i:02d}", (640, 32, 32)) for i in (6, 7)],
    ("OUT08", (640, 64, 64)),
    *[(f"OUT{i:02d}", (320, 64, 64)) for i in (9, 10, 11)],
]
N_GUIDANCE, N_IMAGES, VARIANTS = 2, 1, 3
LZ4 = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)
BZSTD = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2)

# Each variant changes the schema default in one or two ways. Keys: compressors (slab arrays),
# sep (chunk key separator), shard (one shard per call and array), grow
# (StoreWriter's grow_calls), raw (StoreWriter's raw_chunks: False = zarr's Array API), coords
# (StoreWriter's coordinates: False = format 1.0's layout, no coordinate arrays),
# threads (StoreWriter's write_threads), direct (StoreWriter's direct_io), back (StoreWriter's write_back).
COMPARE: dict[str, dict] = {
    "schema default": {},
    "zstd-1": {"compressors": ZstdCodec(level=1)},
    "blosc-lz4 shuffle": {"compressors": LZ4},
    "blosc-zstd-1 shuffle": {"compressors": BZSTD},
    "sep '/'": {"sep": "/"},
    "sep '.'": {"sep": "."},
    "shard per call": {"shard": True},
    "grow 1 call at a time": {"grow": 1},
    "chunks via Array API": {"raw": False},
    "grow 1 + Array API": {"grow": 1, "raw": False},
    "no coordinates": {"coords": False},
    "O_DIRECT": {"direct": True},
    "2 write threads": {"threads": 2},
    "2 threads, O_DIRECT": {"threads": 2, "direct": True},
    "no early write-back": {"back": False},
    "early write-back": {"back": True},
    "2 threads, no early write-back": {"threads": 2, "back": False},
    "2 threads, early write-back": {"threads": 2, "back": True},
}
DEFAULTS = {
    "codecs_for": schema.codecs_for,
    "sep": schema.CHUNK_KEY_ENCODING["separator"],
    "grow": GROW_CALLS,
    "raw": True,
    "threads": WRITE_THREADS,
    "direct": DIRECT_IO,
    "back": WRITE_BACK,
    "create_array": zarr.Group.create_array,
}


def configure(v: dict) -> None:
    """Apply one variant's schema changes on top of the defaults (grow and raw go to StoreWriter)."""
    d = DEFAULTS

    def codecs_for(kind: schema.ArrayKind) -> dict:
        out = d["codecs_for"](kind)
        if kind.chunk_rule == "slab" and "compressors" in v:
            out["compressors"] = v["compressors"]
        return out

    def sharded(self, name, *, shape, chunks, **kw):  # inner chunk = one slab, shard = one call
        if len(shape) == 6 and tuple(chunks[:3]) == (1, 1, 1):
            kw["shards"] = (1, *shape[1:])
        return d["create_array"](self, name, shape=shape, chunks=chunks, **kw)

    schema.codecs_for = codecs_for
    schema.CHUNK_KEY_ENCODING = {**schema.CHUNK_KEY_ENCODING, "separator": v.get("sep", d["sep"])}
    zarr.Group.create_array = sharded if v.get("shard") else d["create_array"]


def smooth_slab(rng: np.random.Generator, chw: tuple[int, int, int]) -> np.ndarray:
    """Return [guidance, image, C, H, W] fp16 activation-like data (see module docstring)."""
    c, h, w = chw
    x = rng.standard_normal((N_GUIDANCE, N_IMAGES, c, h, w), dtype=np.float32)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    low = np.fft.irfft2(np.fft.rfft2(x) * np.exp(-(fy**2 + fx**2) / (2 * 0.1**2)), s=(h, w))
    low /= low.std(axis=(-2, -1), keepdims=True)
    low = 0.9 * low + 0.1 * rng.standard_normal(low.shape)
    scale, offset = rng.lognormal(0, 0.7, (c, 1, 1)), rng.normal(0, 0.5, (c, 1, 1))
    return (low * scale + offset).astype(np.float16)


def make_data(seed: int = 0) -> tuple[list[BlockInfo], list[dict[tuple[str, str], np.ndarray]]]:
    rng = np.random.default_rng(seed)
    blocks = [BlockInfo(n, n, (n,), n, chw, chw, False) for n, chw in SD15_512]
    return blocks, [{(n, "output"): smooth_slab(rng, chw) for n, chw in SD15_512} for _ in range(VARIANTS)]


def time_writer(where: Path, blocks: list[BlockInfo], data: list[dict], steps: int, v: dict) -> tuple[float, float, int]:
    """Return (seconds to close(), seconds to close() + os.sync(), bytes of chunk files)."""
    path = where / "bench.zarr"
    w = StoreWriter(path, model={}, versions={}, grow_calls=v.get("grow", DEFAULTS["grow"]),
                    raw_chunks=v.get("raw", DEFAULTS["raw"]), write_threads=v.get("threads", DEFAULTS["threads"]),
                    direct_io=v.get("direct", DEFAULTS["direct"]), write_back=v.get("back", DEFAULTS["back"]),
                    coordinates=v.get("coords", True))
    w.set_block_table(blocks)
    w.begin_run("main", RunAttrs(n_images=N_IMAGES, guidance=("uncond", "cond")), blocks, which=("output",), dtype="float16")
    w.flush()
    t0 = time.perf_counter()
    for s in range(steps):
        w.submit_call("main", step=s + 1, substep=0, timestep=999.0 - s, slabs=data[s % len(data)])
    w.close()
    t1 = time.perf_counter()
    os.sync()
    t2 = time.perf_counter()
    stored = sum(f.stat().st_size for f in (path / "runs/main/blocks").rglob("*") if f.is_file() and f.name != "zarr.json")
    shutil.rmtree(path)
    return t1 - t0, t2 - t0, stored


def time_disk(where: Path, nbytes: int) -> float:
    """Return seconds to write ``nbytes`` sequentially to one file and fsync it (the estimate's own measurement)."""
    return nbytes / measure_write_speed(where, nbytes)


def prewarm(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it, so the timed run finds guest-backed pages."""
    if nbytes:
        a = np.empty(nbytes, np.uint8)
        a[::4096] = 1
        del a


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="where to write (default: a temp dir beside the repo, else /tmp)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved disk/writer rounds (medians are reported)")
    ap.add_argument("--compare", action="store_true", help="also time the codec/layout/writer variants")
    ap.add_argument("--only", nargs="+", metavar="VARIANT", help=f"variants to time, of: {', '.join(COMPARE)}")
    ap.add_argument("--prewarm", type=float, default=3.0, help="GB of memory to touch before each timed run (0: off)")
    args = ap.parse_args()

    names = args.only or (list(COMPARE) if args.compare else ["schema default"])
    if unknown := set(names) - set(COMPARE):
        ap.error(f"unknown variant(s) {sorted(unknown)}; choose from {list(COMPARE)}")
    blocks, data = make_data()
    total = sum(a.nbytes for a in data[0].values()) * args.steps
    base = args.dir or Path(__file__).resolve().parents[2]
    where = Path(tempfile.mkdtemp(prefix="dumpunet-bench-", dir=base if os.access(base, os.W_OK) else None))
    print(f"{len(blocks)} blocks x {args.steps} steps = {total / 1e9:.2f} GB in {where}; "
          f"{args.repeats} interleaved repeats; zarr {zarr.__version__}")
    warm = int(args.prewarm * 1e9)
    disk: list[float] = []
    res: dict[str, tuple[list[float], list[float], list[float]]] = {n: ([], [], []) for n in names}
    try:
        time_disk(where, total)  # the first big write of a process pays extra
        for _ in range(args.repeats):
            for name in names:
                prewarm(warm)
                disk.append(total / time_disk(where, total) / 1e9)
                configure(COMPARE[name])
                prewarm(warm)
                t_close, t_sync, stored = time_writer(where, blocks, data, args.steps, COMPARE[name])
                for out, x in zip(res[name], (total / t_close / 1e9, total / t_sync / 1e9, total / stored)):
                    out.append(x)
    finally:
        configure({})
        shutil.rmtree(where, ignore_errors=True)
    d = statistics.median(disk)
    print(f"\ndisk write+fsync: {spread(disk)} GB/s, median (min-max) of {len(disk)}\n")
    print(f"{'variant':22} {'to close() GB/s':>18} {'+ os.sync() GB/s':>18} {'x disk':>7} {'size ratio':>10}")
    for name, (cached, synced, ratio) in res.items():
        x = statistics.median(synced) / d
        print(f"{name:22} {spread(cached):>18} {spread(synced):>18} {x:7.2f} {statistics.median(ratio):10.3f}")


if __name__ == "__main__":
    main()

"""End-to-end render throughput against the PNG-encode floor, per PNG encoder, plus compile time.

Run: ``python benchmarks/render.py [--steps 20] [--repeats 3] [--jobs N] [--floor-steps 4]``

Builds a synthetic SD1.5-512 store once (all 25 blocks, 20 steps, both guidance halves, fp16,
smooth random data: upsampled noise with per-channel scales, as U-Net features look) and caches
it in ``$TMPDIR/dumpunet-bench``. Then, in one run:

floor     encode the very grids a render makes (read + colorize + tile done beforehand, kept in
          memory) with ``--jobs`` threads and nothing else: the fastest a render could go.
          Measured on ``--floor-steps`` steps x 25 blocks (memory), reported in Mpix/s.
compute   read + colorize + tile alone: CPU time of one thread (kernels single-threaded, as on
          a render's pool threads).
render    ``dumpunet.render(store, Pick(guidance="cond"))``: all blocks x all steps of one guidance
          half as PNG grids written to disk (default colorization: Custom HSL, Auto [0,1]).
          ``ratio`` = render time / (pixels / floor rate of the same encoder); target <= 1.3.
          The CPU columns (process CPU ms per Mpix) give the same ratio without the noise of
          other programs sharing the cores.
compile   the first render of a fresh process (``--blocks OUT11 --steps 20``) with an empty
          numba cache, then with the cache filled, minus the same render warm; how many
          signatures each kernel compiled (one per entry kernel: the first render pays
          compilation once); and the wall time of the same ``dumpunet render`` command.

Timings are medians over ``--repeats`` runs, encoders interleaved.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np

import dumpunet
from dumpunet.analyzer.color.colorize import ColorSpec, colorize
from dumpunet.analyzer.grid import grid_shape, tile
from dumpunet.analyzer.png import ENCODERS, encode_png, resolve_encoder
from dumpunet.store.schema import BlockInfo, RunAttrs
from dumpunet.store.writer import StoreWriter

CACHE_VERSION = "sd15-512-v1"

# name, diffusers module, (C, H, W) at 512x512
SD15_BLOCKS = [
    ("IN00", "conv_in", (320, 64, 64)),
    ("IN01", "down_blocks.0.attentions.0", (320, 64, 64)),
    ("IN02", "down_blocks.0.attentions.1", (320, 64, 64)),
    ("IN03", "down_blocks.0.downsamplers.0", (320, 32, 32)),
    ("IN04", "down_blocks.1.attentions.0", (640, 32, 32)),
    ("IN05", "down_blocks.1.attentions.1", (640, 32, 32)),
    ("IN06", "down_blocks.1.downsamplers.0", (640, 16, 16)),
    ("IN07", "down_blocks.2.attentions.0", (1280, 16, 16)),
    ("IN08", "down_blocks.2.attentions.1", (1280, 16, 16)),
    ("IN09", "down_blocks.2.downsamplers.0", (1280, 8, 8)),
    ("IN10", "down_blocks.3.resnets.0", (1280, 8, 8)),
    ("IN11", "down_blocks.3.resnets.1", (1280, 8, 8)),
    ("M00", "mid_block", (1280, 8, 8)),
    ("OUT00", "up_blocks.0.resnets.0", (1280, 8, 8)),
    ("OUT01", "up_blocks.0.resnets.1", (1280, 8, 8)),
    ("OUT02", "up_blocks.0.resnets.2", (1280, 16, 16)),
    ("OUT03", "up_blocks.1.attentions.0", (1280, 16, 16)),
    ("OUT04", "up_blocks.1.attentions.1", (1280, 16, 16)),
    ("OUT05", "up_blocks.1.attentions.2", (1280, 32, 32)),
    ("OUT06", "up_blocks.2.attentions.0", (640, 32, 32)),
    ("OUT07", "up_blocks.2.attentions.1", (640, 32, 32)),
    ("OUT08", "up_blocks.2.attentions.2", (640, 64, 64)),
    ("OUT09", "up_blocks.3.attentions.0", (320, 64, 64)),
    ("OUT10", "up_blocks.3.attentions.1", (320, 64, 64)),
    ("OUT11", "up_blocks.3.attentions.2", (320, 64, 64)),
]


def block_table() -> list[BlockInfo]:
    return [BlockInfo(n, m, (m,), m, shape, shape, "attentions" in m) for n, m, shape in SD15_BLOCKS]


def _interp(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation matrix [n_out, n_in] (align corners)."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    f = pos - i0
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] = 1 - f
    m[np.arange(n_out), i0 + 1] = f
    return m


def smooth(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    """``[n, c, h, w]`` float16: noise on an (h/8+1)-grid, upsampled, with per-channel scales."""
    hc, wc = h // 8 + 1, w // 8 + 1
    coarse = rng.standard_normal((n, c, hc, wc), dtype=np.float32)
    maps = _interp(h, hc) @ coarse @ _interp(w, wc).T
    scale = np.exp(0.7 * rng.standard_normal((1, c, 1, 1), dtype=np.float32))
    maps *= scale
    maps += 0.05 * rng.standard_normal(maps.shape, dtype=np.float32)
    return maps.astype(np.float16)


def build_store(path: Path, steps: int) -> None:
    marker = path.with_suffix(".ok")
    if marker.exists() and marker.read_text() == f"{CACHE_VERSION} {steps}" and path.is_dir():
        return
    shutil.rmtree(path, ignore_errors=True)
    marker.unlink(missing_ok=True)
    blocks = block_table()
    t0 = time.perf_counter()
    w = StoreWriter(path, model={"name": "synthetic-sd15-512"}, versions={})
    w.set_block_table(blocks)
    w.begin_run("main", RunAttrs(prompt="synthetic", n_images=1, guidance=("uncond", "cond"), steps=steps),
                blocks, which=("output",), dtype="float16")
    rng = np.random.default_rng(1719471015)
    for s in range(1, steps + 1):
        slabs = {(b.name, "output"): smooth(rng, 2, *b.output_shape)[:, None] for b in blocks}
        w.submit_call("main", step=s, substep=0, timestep=1000.0 - 50 * s, slabs=slabs)
    w.finish_run("main", images=np.zeros((1, 512, 512, 3), np.uint8), latents=np.zeros((1, 4, 64, 64), np.float32))
    w.close()
    marker.write_text(f"{CACHE_VERSION} {steps}")
    print(f"built {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def grids(store, steps: list[int], spec: ColorSpec) -> tuple[list[np.ndarray], float]:
    """The grids a default render makes for these steps, and the CPU seconds it took to make them."""
    run = store.run()
    arrays = {b: run.array(b) for b in store.blocks}
    g = run.guidance_index("cond")
    out = []
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # as on a render's pool threads
    t0 = time.thread_time()
    for step in steps:
        k = run.calls.index(step)
        for b in store.blocks:
            x = arrays[b][k, 0, g]
            out.append(tile(colorize(x, spec), *grid_shape(*x.shape)))
    t = time.thread_time() - t0
    numba.set_num_threads(threads)
    return out, t


def encode_all(images: list[np.ndarray], encoder: str, jobs: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and PNG bytes of encoding ``images`` on ``jobs`` threads."""
    with ThreadPoolExecutor(jobs) as pool:
        c0, t0 = cpu_seconds(), time.perf_counter()
        sizes = list(pool.map(lambda im: len(encode_png(im, encoder=encoder)), images))
        return time.perf_counter() - t0, cpu_seconds() - c0, sum(sizes)


COMPILE_SNIPPET = """
import sys, time, tempfile
t0 = time.perf_counter()
import dumpunet
from dumpunet.analyzer.color import kernels
t1 = time.perf_counter()
out = tempfile.mkdtemp()
dumpunet.render(sys.argv[1], dumpunet.Pick(blocks="OUT11", steps=sys.argv[2]), out=out, progress=False)
t2 = time.perf_counter()
dumpunet.render(sys.argv[1], dumpunet.Pick(blocks="OUT11", steps=sys.argv[2]), out=out, progress=False)
t3 = time.perf_counter()
sigs = {n: len(getattr(kernels, n).signatures) for n in dir(kernels) if hasattr(getattr(kernels, n), "signatures")}
print(t1 - t0, t2 - t1, t3 - t2, sigs)
"""


def first_render(store: Path, step: int, cache_dir: str) -> tuple[float, float, float, dict[str, int]]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    proc = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET, str(store), str(step)], env=env,
                          capture_output=True, text=True, check=True)
    imp, first, warm, sigs = proc.stdout.strip().split(" ", 3)
    return float(imp), float(first), float(warm), eval(sigs)  # noqa: S307 - our own subprocess's dict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=None, help="encoding threads (default: all CPUs)")
    ap.add_argument("--floor-steps", type=int, default=4, help="steps whose grids the floor encodes")
    ap.add_argument("--encoders", default=",".join(e for e in ENCODERS if _available(e)))
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dumpunet-bench")
    args = ap.parse_args()
    jobs = args.jobs or len(os.sched_getaffinity(0))
    encoders = args.encoders.split(",")

    args.cache.mkdir(parents=True, exist_ok=True)
    path = args.cache / "sd15-512.zarr"
    build_store(path, args.steps)
    store = dumpunet.open(path)
    spec = ColorSpec()
    colorize(store.features("IN11", 1), spec)  # compile before timing
    dumpunet.render(store, dumpunet.Pick(blocks="IN11", steps="1"), out=tempfile.mkdtemp(), progress=False)
    print(f"store: {path} ({store.disk_bytes() / 1e9:.2f} GB), {len(store.blocks)} blocks x {len(store.steps)} steps; "
          f"jobs={jobs}, cpus={os.cpu_count()}, colorization {spec.slug()}")

    # --- compute and the floor
    floor_steps = store.steps[: args.floor_steps]
    images, _ = grids(store, floor_steps, spec)
    floor_px = sum(im.shape[0] * im.shape[1] for im in images)
    compute: list[float] = []  # CPU ms per Mpix
    floor: dict[str, list[float]] = {e: [] for e in encoders}  # Mpix/s on `jobs` threads
    floor_cpu: dict[str, list[float]] = {e: [] for e in encoders}  # CPU ms per Mpix
    for _ in range(args.repeats):
        one, c_one = grids(store, floor_steps[:1], spec)
        compute.append(c_one * 1e3 / (sum(im.shape[0] * im.shape[1] for im in one) / 1e6))
        for e in encoders:
            t, c, _ = encode_all(images, e, jobs)
            floor[e].append(floor_px / 1e6 / t)
            floor_cpu[e].append(c * 1e3 / (floor_px / 1e6))
    del images, one

    # --- end to end
    total_px = 0
    e2e: dict[str, list[float]] = {e: [] for e in encoders}
    e2e_cpu: dict[str, list[float]] = {e: [] for e in encoders}
    e2e_bytes: dict[str, int] = {}
    out = Path(tempfile.mkdtemp(prefix="dumpunet-render-"))
    try:
        for _ in range(args.repeats):
            for e in encoders:
                shutil.rmtree(out, ignore_errors=True)
                c0, t0 = cpu_seconds(), time.perf_counter()
                files = dumpunet.render(store, dumpunet.Pick(guidance="cond"), out=out, jobs=jobs, progress=False,
                                        png_encoder=e)
                t, c = time.perf_counter() - t0, cpu_seconds() - c0
                total_px = sum(f.params["size"][0] * f.params["size"][1] for f in files)
                e2e[e].append(total_px / 1e6 / t)
                e2e_cpu[e].append(c * 1e3 / (total_px / 1e6))
                e2e_bytes[e] = sum(f.path.stat().st_size for f in files)
        n_files = len(files)
    finally:
        shutil.rmtree(out, ignore_errors=True)

    med = statistics.median
    print(f"\nrender: {n_files} PNGs, {total_px / 1e6:.0f} Mpix; floor: {len(floor_steps)} steps x 25 blocks, "
          f"{floor_px / 1e6:.0f} Mpix; compute (read + colorize + tile): {med(compute):.1f} CPU ms/Mpix\n")
    head = (f"{'encoder':<11} {'floor':>7} {'render':>7} {'ratio':>6} {'floor CPU':>10} {'render CPU':>11} "
            f"{'CPU ratio':>9} {'PNG MB':>7} {'bytes/px':>8}")
    print(head + "\n" + "-" * len(head))
    for e in encoders:
        f, r = med(floor[e]), med(e2e[e])
        fc, rc = med(floor_cpu[e]), med(e2e_cpu[e])
        print(f"{e:<11} {f:>7.1f} {r:>7.1f} {f / r:>6.2f} {fc:>10.1f} {rc:>11.1f} {rc / fc:>9.2f} "
              f"{e2e_bytes[e] / 1e6:>7.0f} {e2e_bytes[e] / total_px:>8.3f}")
    if "pillow" in floor:
        for e in encoders:
            print(f"{e} render vs the Pillow floor: {med(floor['pillow']) / med(e2e[e]):.2f}x the time "
                  f"(CPU {med(e2e_cpu[e]) / med(floor_cpu['pillow']):.2f}x)")
    print("floor/render in Mpix/s (wall, {} threads); CPU columns in CPU ms per Mpix; ratio = render time / floor time "
          "for the same pixels; default encoder: {}".format(jobs, resolve_encoder(None)))

    # --- compile time
    step = store.steps[-1]
    with tempfile.TemporaryDirectory() as cache_dir:
        imp0, cold, warm0, sigs = first_render(path, step, cache_dir)
        imp1, cached, warm1, _ = first_render(path, step, cache_dir)
    print(f"\nfirst render of OUT11 step {step} in a fresh process (import dumpunet: {imp0:.2f} s):")
    print(f"  empty numba cache : {cold:.2f} s  (warm render {warm0:.2f} s: compile {cold - warm0:.2f} s)")
    print(f"  filled cache      : {cached:.2f} s  (warm render {warm1:.2f} s: load {cached - warm1:.2f} s)")
    used = {k: v for k, v in sigs.items() if v}
    print(f"  signatures compiled: {used}")
    with tempfile.TemporaryDirectory() as cache_dir, tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, "-m", "dumpunet.cli", "render", str(path), "--blocks", "OUT11", "--steps", str(step),
               "--out", out_dir, "--quiet"]
        walls = []
        for _ in range(2):
            t0 = time.perf_counter()
            subprocess.run(cmd, env=dict(os.environ, NUMBA_CACHE_DIR=cache_dir), check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    print(f"  CLI: {' '.join(['dumpunet'] + cmd[3:-3])} ...: {walls[0]:.2f} s cold cache, {walls[1]:.2f} s cached")


def _available(encoder: str) -> bool:
    try:
        resolve_encoder(encoder)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    main()

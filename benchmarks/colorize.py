"""Colorization throughput: the original extension's approach vs numpy vs dumpunet's numba kernels.

Run: ``python benchmarks/colorize.py [--maps 320] [--size 64]``

Input: smooth random float16 maps ``[N, size, size]`` (upsampled noise, as U-Net features look).
Columns, in Mpix/s (higher is better):

original   the extension's own code: numpy transform, then ``np.vectorize`` over a Python
           function per pixel (``colorsys.hls_to_rgb`` for HSL, the red/blue lambda); White/Black
           needed no per-pixel step. Timed on a sample of maps and extrapolated.
reference  ``tests/analyzer/reference.py``: the test oracle (colorsys through np.vectorize).
numpy      the vectorized numpy exact path: numpy transform, ``expressions.evaluate``, the
           numpy port of hls_to_rgb (what a good pure-numpy implementation does).
numba      ``dumpunet.analyzer.color.colorize`` (all threads, one thread, and on float32 input: float16
           maps under Linear/Sigmoid go through a 65536-entry table of pixels per value).

Then the first-call cost: numba compilation with an empty cache vs a filled one, each in a
fresh subprocess, and the Custom lookup-table build.
"""

from __future__ import annotations

import argparse
import colorsys
import os
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "analyzer"))
import reference as ref  # noqa: E402 - the numpy test oracle lives with the tests
from dumpunet.analyzer.color.colorize import ColorSpec, colorize
from dumpunet.analyzer.color.lut import build_lut, exact_pixels, quantize


def smooth_maps(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, size // 8 + 1, size // 8 + 1))
    grid = np.linspace(0, coarse.shape[1] - 1, size)
    i0 = np.floor(grid).astype(int).clip(0, coarse.shape[1] - 2)
    f = grid - i0
    rows = coarse[:, i0] * (1 - f)[None, :, None] + coarse[:, i0 + 1] * f[None, :, None]
    maps = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]
    return np.ascontiguousarray(1.5 * maps + 0.05 * rng.standard_normal(maps.shape), dtype=np.float16)


# --- the original extension's code path (scripts/dumpunetlib/colorizer.py), per map -------------


def _orig_auto01(a):
    mn, mx = np.min(a), np.max(a)
    return a if (np.isnan(mn) or np.isnan(mx) or mn == mx) else (a - mn) / (mx - mn)


_orig_hsl = np.vectorize(lambda v: colorsys.hls_to_rgb((2 + v) / 3, 0.5, 1.0), otypes=[np.float32] * 3)


def _orig_rb(v):
    return (v if v > 0.0 else 0.0, 0.0, np.abs(v) if v < 0.0 else 0.0)


_orig_rb_v = np.vectorize(_orig_rb, otypes=[np.float32] * 3)


def original(maps: np.ndarray, which: str) -> list[np.ndarray]:
    out = []
    for m in maps:
        a = m.astype(np.float32)
        if which == "custom":
            x = np.dstack(_orig_hsl(_orig_auto01(a)))
        elif which == "gray":
            s = 1.0 / (1.0 + np.exp(-1.0 * (a + 0.0)))
            x = np.abs(s - 0.5) * 2.0
        else:
            x = np.dstack(_orig_rb_v(((np.clip(a, -1.0, 1.0) + 1.0) / 2.0 - 0.5) * 2.0))
        out.append(np.clip(x * 256, 0.0, 255.0).astype(np.uint8))
    return out


# --- numpy exact path --------------------------------------------------------------------------


def numpy_path(maps: np.ndarray, spec: ColorSpec) -> np.ndarray:
    t = ref.transform(maps, spec)
    if spec.method == "White/Black":
        return quantize(t)
    if spec.method == "Red/Blue":
        return ref.colorize(maps, spec)
    return exact_pixels(t, spec.expressions, spec.space)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


COMPILE_SNIPPET = """
import time, numpy as np
t0 = time.perf_counter()
from dumpunet.analyzer.color.colorize import ColorSpec, colorize
x = np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float16)
for spec in (ColorSpec(), ColorSpec("White/Black", "Sigmoid"), ColorSpec("Red/Blue", "Linear")):
    colorize(x, spec)
print(time.perf_counter() - t0)
"""


def first_call_seconds(cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def measure(maps: np.ndarray, sample: np.ndarray, spec: ColorSpec, which: str) -> str:
    """One table row: Mpix/s of every path, and the ratios."""
    mpix = maps.size / 1e6
    scale = maps.shape[0] / sample.shape[0]
    maps32 = maps.astype(np.float32)
    out = colorize(maps, spec)  # compile and build tables outside the timing
    colorize(maps32, spec)
    slow = mpix / (scale * best(lambda: original(sample, which), 1))
    refr = mpix / (scale * best(lambda: ref.colorize(sample, spec), 1))
    nump = mpix / best(lambda: numpy_path(maps, spec), 3)
    fast = mpix / best(lambda: colorize(maps, spec, out=out), 20)
    f32 = mpix / best(lambda: colorize(maps32, spec, out=out), 20)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    fast1 = mpix / best(lambda: colorize(maps, spec, out=out), 20)
    numba.set_num_threads(threads)
    speeds = "".join(f"{x:10.1f}" for x in (slow, refr, nump, fast, fast1, f32))
    return speeds + f"{fast / slow:6.0f}x{fast / nump:6.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", type=int, default=320)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sample", type=int, default=8, help="maps timed for the slow per-pixel paths")
    args = parser.parse_args()

    maps = smooth_maps(args.maps, args.size)
    sample = maps[: args.sample]
    print(f"{args.maps} maps of {args.size}x{args.size} float16 = {maps.size / 1e6:.2f} Mpix; "
          f"{numba.get_num_threads()} threads; {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as cache:
        cold = first_call_seconds(cache)
        warm = first_call_seconds(cache)
    build_lut.cache_clear()
    t0 = time.perf_counter()
    lut = build_lut("hsl", ("(2+v)/3", "1.0", "0.5"), 0.0, 1.0)
    lut_s = time.perf_counter() - t0

    cases = [
        ("Custom HSL Auto[0,1]", ColorSpec(), "custom"),
        ("White/Black Sigmoid", ColorSpec("White/Black", "Sigmoid"), "gray"),
        ("Red/Blue Linear", ColorSpec("Red/Blue", "Linear"), "rb"),
    ]
    cols = ("original", "reference", "numpy", "numba", "numba 1T", "numba f32")
    header = f"{'colorization':22}" + "".join(f"{c:>10}" for c in cols) + f"{'c/a':>7}{'c/b':>7}"
    print("\nMpix/s (c = numba, a = original, b = numpy; 1T = one thread; f32 = float32 input)")
    print(header)
    print("-" * len(header))
    for name, spec, which in cases:
        print(f"{name:22}" + measure(maps, sample, spec, which))

    counts = lut.counts()
    print(f"\nfirst call (import + compile + 3 colorizations), fresh process: cold cache {cold:.2f} s, "
          f"cached {warm:.2f} s")
    print(f"Custom table build (once per expressions and domain, then cached): {lut_s * 1e3:.0f} ms; "
          f"{lut.cells} cells: {counts['one']} one pixel, {counts['split']} split at a proven threshold, "
          f"{counts['exact_path']} left to the exact path")


if __name__ == "__main__":
    main()

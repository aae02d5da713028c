"""Served-view latency of ``dumpunet view`` against the PNG-encode floor of the same images.

Run: ``python benchmarks/view.py [--steps 10] [--repeats 5]``

Builds a synthetic SD1.5-512 store once (cached in ``$TMPDIR/dumpunet-bench/view-sd15.zarr``):
the five 320 x 64 x 64 blocks (IN01, IN02, OUT09-OUT11) and M00 (1280 x 8 x 8), ``--steps``
steps, the cond half, fp16; cross-attention probabilities (8 heads, 77 tokens, fp16) of SD1.5's
16 cross-attention layers at 64², 32², 16² and 8² queries; a 512 x 512 final image. Then
starts the server on 127.0.0.1 and times HTTP requests from this process (urllib), all cache
misses unless said:

new view      the first view of a block at a step (each request another block or step)
step change   OUT11 at the next step (the slider moving, one step every ``--dwell`` ms: 100, four
              times the play button's pace), as the page gets it: while the slider moves the
              server renders the next step ahead (X-Cache "ahead"), so most of these find it
              rendered or under way; the CPU column misses the part of that render done between
              requests
step rendered the same without rendering ahead (``ahead=False``): each step rendered on request
cache hit     the same view again
heatmap       the word heatmap of one token over the final image, summed over every layer and
              every step up to the last (the heaviest heatmap of the store): three tokens a pass,
              each drawn from the store (nothing of it cached but the final image, which the
              server keeps from the one drawn before)
floor         ``encode_png`` alone of the very same images, in this process
formats       the same images encoded as the server sends them (PNG at ``--png-level``) against
              lossless WebP (Pillow/libwebp) at its fastest (``method=0, quality=0``) and at its
              defaults (``method=4, quality=80``): CPU ms and bytes per image, and the ratios.
              The issue asks for "PNG (or WebP if measured faster)"; bytes are nearly free over
              loopback, so encode and decode times decide. ``--decode``: the browser's side too,
              chromium's ``createImageBitmap`` of each format (median of 10), through Playwright

Wall-clock medians suffer from other programs on the machine; the CPU columns (this process's CPU
time per request, server threads included, and per encode) do much less.

Targets (issue 9): new view <= 100 ms median, step change <= 50 ms, heatmap <= 100 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from render import block_table, smooth  # noqa: E402 - the SD1.5-512 block table and feature maker

from dumpunet.analyzer.png import encode_png  # noqa: E402
from dumpunet.store import open_store, schema  # noqa: E402
from dumpunet.store.schema import LayerAttrs, RunAttrs, TokenRow  # noqa: E402
from dumpunet.store.writer import StoreWriter  # noqa: E402
from dumpunet.viewer.server import start  # noqa: E402
from dumpunet.viewer.state import ViewState  # noqa: E402
from dumpunet.viewer.structure import resolve  # noqa: E402
from dumpunet.viewer.views import render_view  # noqa: E402

CACHE_VERSION = "view-sd15-512-v1"
BLOCKS = ("IN01", "IN02", "M00", "OUT09", "OUT10", "OUT11")
CROSS = {**{f"{b}.attn2": 64 for b in ("IN01", "IN02", "OUT09", "OUT10", "OUT11")},
         **{f"{b}.attn2": 32 for b in ("IN04", "IN05", "OUT06", "OUT07", "OUT08")},
         **{f"{b}.attn2": 16 for b in ("IN07", "IN08", "OUT03", "OUT04", "OUT05")}, "M00.attn2": 8}
HEADS, T = 8, 77
TOKENS = ["<|startoftext|>", "a</w>", "cute</w>", "girl</w>", ",</w>", "pink</w>", "hair</w>"] + ["<|endoftext|>"] * 70


def build_store(path: Path, steps: int) -> None:
    marker = path.with_suffix(".ok")
    if marker.exists() and marker.read_text() == f"{CACHE_VERSION} {steps}" and path.is_dir():
        return
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    blocks = [b for b in block_table() if b.name in BLOCKS]
    w = StoreWriter(path, model={"name": "synthetic-sd15-512"}, versions={})
    w.set_block_table(block_table())
    tokens = {"cond": (TokenRow(tuple(range(T)), tuple(TOKENS), 8),)}
    info = RunAttrs(prompt="a cute girl, pink hair", n_images=1, guidance=("cond",), steps=steps, height=512, width=512,
                    attention_layers=tuple(CROSS), tokens=tokens)
    w.begin_run("main", info, blocks, which=("output",), dtype="float16")
    kind = schema.ATTENTION_FEATURES["qk"]
    w.add_arrays("main", {(name, "qk"): (kind, (1, 1, HEADS, n * n, T), "float16", {"layer": name},
                                         LayerAttrs(layer_hw=(n, n))) for name, n in CROSS.items()})
    rng = np.random.default_rng(1719471015)
    for s in range(1, steps + 1):
        slabs = {(b.name, "output"): smooth(rng, 1, *b.output_shape)[:, None] for b in blocks}
        for name, n in CROSS.items():
            logits = rng.standard_normal((1, 1, HEADS, n * n, T), dtype=np.float32)
            p = np.exp(logits)
            slabs[(name, "qk")] = (p / p.sum(-1, keepdims=True)).astype(np.float16)
        w.submit_call("main", step=s, substep=0, timestep=1000.0 - 1000 * s / steps, slabs=slabs)
    image = rng.integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    w.finish_run("main", images=image, latents=np.zeros((1, 4, 64, 64), np.float32))
    w.close()
    marker.write_text(f"{CACHE_VERSION} {steps}")
    print(f"built {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


CPU: list[float] = []  # process CPU ms of each fetch (server threads included): robust to other programs' load


def fetch(url: str) -> tuple[float, bytes, str]:
    t0, c0 = time.perf_counter(), time.process_time()
    with urllib.request.urlopen(url) as res:
        data = res.read()
        cache = res.headers.get("X-Cache", "")
    CPU.append((time.process_time() - c0) * 1000)
    return (time.perf_counter() - t0) * 1000, data, cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="passes over the views (medians over all requests)")
    ap.add_argument("--dwell", type=float, default=100, help="ms between the step changes of the slider")
    ap.add_argument("--png-level", type=int, default=0, help="the server's deflate level (0: stored, its default)")
    ap.add_argument("--decode", action="store_true", help="also time each format's decode in chromium (Playwright)")
    ap.add_argument("--heatmaps-only", action="store_true",
                    help="time the word heatmaps alone (and their PNG floor), none of the grids nor the formats")
    args = ap.parse_args()
    path = Path(tempfile.gettempdir()) / "dumpunet-bench" / "view-sd15.zarr"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_store(path, args.steps)
    server = start([path], png_level=args.png_level)
    store = open_store(path)
    base = server.url + "api/image?"
    try:
        fetch(base + "block=OUT11&step=1&gain=3&transform=sigmoid")  # compile the kernels once, outside the timings
        fetch(base + "view=heatmap&token=2&step=1")
        rows: dict[str, list[float]] = {"new view": [], "step change": [], "step rendered": [], "cache hit": [],
                                        "heatmap": []}
        served: dict[str, int] = {}  # X-Cache of the step changes
        cpu: dict[str, list[float]] = {k: [] for k in rows}
        queries: dict[str, list[str]] = {k: [] for k in rows}
        big = [b for b in BLOCKS if b != "M00"]
        for rep in range(args.repeats):
            # each pass and kind its own offset (no change to Auto pixels): every view is new to the cache
            gain = f"&gain={1 + rep}"
            for k, block in enumerate([] if args.heatmaps_only else big):
                q = f"block={block}&step={1 + (k + rep) % args.steps}&offset={100 + rep}{gain}"
                rows["new view"].append(fetch(base + q)[0])
                cpu["new view"].append(CPU[-1])
                queries["new view"].append(q)
            for name, offset in () if args.heatmaps_only else (("step change", 200), ("step rendered", 300)):
                server.ahead = name == "step change"
                for s in range(1, args.steps + 1):
                    q = f"block=OUT11&step={s}&offset={offset + rep}{gain}"
                    ms, _, cache = fetch(base + q)
                    assert cache in (("miss", "ahead") if server.ahead else ("miss",)), cache
                    served[cache] = served.get(cache, 0) + (name == "step change")
                    rows[name].append(ms)
                    cpu[name].append(CPU[-1])
                    queries[name].append(q)
                    ms, _, cache = fetch(base + q)
                    assert cache == "hit"
                    rows["cache hit"].append(ms)
                    cpu["cache hit"].append(CPU[-1])
                    time.sleep(args.dwell / 1000)
            for k in range(3):  # three words of the prompt in turn, each new to the server
                q = f"view=heatmap&token={1 + (3 * rep + k) % 76}&step={args.steps}&alpha=0.{5 + rep % 4}"
                rows["heatmap"].append(fetch(base + q)[0])
                cpu["heatmap"].append(CPU[-1])
                queries["heatmap"].append(q)
        floor: dict[str, list[float]] = {}
        formats: dict[tuple[str, str], list[tuple[float, int]]] = {}
        samples: dict[str, np.ndarray] = {}  # one image per kind, for --decode
        for name in ("new view", "step change", "step rendered", "heatmap"):
            for q in queries[name][: 2 * args.steps]:
                params = dict(p.split("=", 1) for p in q.split("&"))
                pixels = render_view(store, resolve(store, ViewState.from_query(params)))
                t0, c0 = time.perf_counter(), time.process_time()
                encode_png(pixels, level=args.png_level)
                floor.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
                floor.setdefault(name + " cpu", []).append((time.process_time() - c0) * 1000)
                floor.setdefault(name + " size", []).append(pixels.shape[0] * pixels.shape[1] / 1e6)
                for fmt, (ms, size) in ({} if args.heatmaps_only else encodings(pixels, args.png_level)).items():
                    formats.setdefault((name, fmt), []).append((ms, size))
                samples.setdefault(name, pixels)
        report = {name: {"median_ms": round(statistics.median(ms), 1), "n": len(ms),
                         "cpu_ms": round(statistics.median(cpu[name]), 1),
                         "png_floor_cpu_ms": round(statistics.median(floor[name + " cpu"]), 1) if name in floor else None,
                         "png_floor_ms": round(statistics.median(floor[name]), 1) if name in floor else None,
                         "mpix": round(statistics.median(floor[name + " size"]), 3) if name in floor else None}
                  for name, ms in rows.items() if ms}
    finally:
        server.shutdown()
    print(f"{'':14}{'median ms':>10}{'PNG floor':>10}{'CPU ms':>8}{'floor CPU':>10}{'Mpix':>7}{'n':>4}   (target ms)")
    targets = {"new view": "<= 100", "step change": "<= 50", "step rendered": "", "heatmap": "<= 100", "cache hit": ""}

    def cell(v: object) -> str:
        return "" if v is None else str(v)

    for name, r in report.items():
        print(f"{name:14}{r['median_ms']:>10}{cell(r['png_floor_ms']):>10}{r['cpu_ms']:>8}"
              f"{cell(r['png_floor_cpu_ms']):>10}{cell(r['mpix']):>7}{r['n']:>4}   {targets[name]}")
    print("step changes served: " + ", ".join(f"{n} {k}" for k, n in sorted(served.items())))
    print(f"\n{'encode':14}" + "".join(f"{f + ' ms':>16}{f + ' KB':>16}" for f in FORMATS)
          + f"{'webp0/png ms':>14}{'webp0/png KB':>14}")
    for name in dict.fromkeys(n for n, _ in formats):
        med = {f: (statistics.median(ms for ms, _ in formats[(name, f)]),
                   statistics.median(b for _, b in formats[(name, f)]) / 1024) for f in FORMATS}
        report[name]["formats"] = {f: {"cpu_ms": round(ms, 1), "kb": round(kb, 1)} for f, (ms, kb) in med.items()}
        print(f"{name:14}" + "".join(f"{ms:>16.1f}{kb:>16.0f}" for ms, kb in med.values())
              + f"{med['webp0'][0] / med['png'][0]:>14.1f}{med['webp0'][1] / med['png'][1]:>14.2f}")
    if args.decode:
        print(f"\n{'decode':14}" + "".join(f"{f + ' ms':>16}" for f in FORMATS) + "   (chromium createImageBitmap)")
        for name, ms in decode_in_browser(samples, args.png_level).items():
            report[name]["decode_ms"] = ms
            print(f"{name:14}" + "".join(f"{ms[f]:>16.1f}" for f in FORMATS))
    print(json.dumps(report), file=sys.stderr)


def decode_in_browser(samples: dict[str, np.ndarray], png_level: int, repeats: int = 10) -> dict[str, dict[str, float]]:
    """Median ms of chromium's ``createImageBitmap`` of one image per kind, in each of :data:`FORMATS`."""
    import base64
    import shutil

    from PIL import Image
    from playwright.sync_api import sync_playwright

    def encoded(pixels: np.ndarray, fmt: str) -> bytes:
        if fmt == "png":
            return encode_png(pixels, level=png_level)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "WEBP", lossless=True, **({"method": 0, "quality": 0} if fmt == "webp0" else {}))
        return buf.getvalue()

    out: dict[str, dict[str, float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto("about:blank")
        for name, pixels in samples.items():
            out[name] = {}
            for fmt in FORMATS:
                data = base64.b64encode(encoded(pixels, fmt)).decode()
                out[name][fmt] = page.evaluate("""async ([b64, type, n]) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const times = [];
                    for (let i = 0; i < n; i++) {
                        const blob = new Blob([bytes], { type });  // a fresh blob: no decoded-image cache
                        const t0 = performance.now();
                        (await createImageBitmap(blob)).close();
                        times.push(performance.now() - t0);
                    }
                    times.sort((a, b) => a - b);
                    return times[Math.floor(n / 2)];
                }""", [data, "image/png" if fmt == "png" else "image/webp", repeats])
        browser.close()
    return out


FORMATS = ("png", "webp0", "webp")
"""The server's PNG; lossless WebP at its fastest (method 0, quality 0) and at Pillow's defaults (4, 80)."""


def encodings(pixels: np.ndarray, png_level: int) -> dict[str, tuple[float, int]]:
    """CPU ms and bytes of one image in each of :data:`FORMATS` (WebP's time includes Pillow's copy of the pixels)."""
    from PIL import Image

    out = {}
    for fmt in FORMATS:
        c0 = time.process_time()
        if fmt == "png":
            data = encode_png(pixels, level=png_level)
        else:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "WEBP", lossless=True, **({"method": 0, "quality": 0} if fmt == "webp0" else {}))
            data = buf.getvalue()
        out[fmt] = ((time.process_time() - c0) * 1000, len(data))
    return out


if __name__ == "__main__":
    main()

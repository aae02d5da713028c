"""Would a compressor pay for itself? Ratios and speeds on real fp16 chunks and on SD1.5-size ones.

Two sources of chunks, each compressed by zstd-1 and by blosc (lz4 + byte shuffle, and zstd-1 +
byte shuffle), single-threaded as one writer thread would:

- **real**: the chunk files of a tiny-sd1 recording made here (random weights, 256x256, all 25
  blocks, cross-attention ``qk`` of every head, and ``qk`` recorded again with
  ``--attention-heads mean``), fp16, read back byte for byte from the store;
- **SD1.5-size**: a synthetic 320x64x64 block output (benchmarks/writer_throughput.py's smooth
  random data) and a synthetic 8x4096x77 cross-attention slab: the softmax of normal logits with
  the start token lifted, as SD's maps put most of each row on ``<start>``.

For each it prints the size ratio (raw / compressed), compression and decompression MB/s, and
the effective write rate of a writer that compresses each chunk and then writes it, next to
plain writing at the disk's speed (``write`` + ``fsync`` of 256 MB measured in ``--dir``, or
``--disk-speed``): ``x plain`` above 1 means compressing would make that recording faster.

    python benchmarks/compression.py --steps 4
    python benchmarks/compression.py --steps 4 --disk-speed 1500
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numcodecs import Blosc, Zstd

CODECS: dict[str, Callable[[], object]] = {
    "zstd-1": lambda: Zstd(level=1),
    "blosc lz4+shuffle": lambda: Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE, typesize=2),
    "blosc zstd-1+shuffle": lambda: Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE, typesize=2),
}


def record_tiny(where: Path, steps: int) -> dict[str, list[bytes]]:
    """Record tiny-sd1 (all blocks, qk of every head) and again with the heads' mean; return chunk bytes by kind."""
    import torch

    import dumpunet
    from dumpunet.recorder.attention_layers import AttentionOptions
    from dumpunet.recorder.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.set_progress_bar_config(disable=True)
    for name, heads in (("all.zarr", "all"), ("mean.zarr", "mean")):
        with dumpunet.record(pipe, where / name, attention=AttentionOptions(heads=heads), progress=False):
            pipe(prompt="a cute girl, pink hair", negative_prompt="bad anatomy", num_inference_steps=steps, height=256,
                 width=256, generator=torch.Generator().manual_seed(1), output_type="np")

    def chunks(store: str, pattern: str) -> list[bytes]:
        return [p.read_bytes() for p in sorted((where / store / "runs/main").glob(pattern)) if p.is_file()]

    return {"real blocks (25, fp16)": chunks("all.zarr", "blocks/*/output/c.*"),
            "real cross-attn qk, all heads": chunks("all.zarr", "attention/*/qk/c.*"),
            "real cross-attn qk, heads mean": chunks("mean.zarr", "attention/*/qk/c.*")}


def synthetic(n: int, seed: int = 0) -> dict[str, list[bytes]]:
    """``n`` SD1.5-size block slabs and attention slabs (one image, one guidance half each)."""
    from writer_throughput import smooth_slab

    rng = np.random.default_rng(seed)
    blocks = [smooth_slab(rng, (320, 64, 64))[0, 0].tobytes() for _ in range(n)]
    maps = []
    for _ in range(n):
        logits = rng.normal(0, 1.5, (8, 4096, 77)).astype(np.float32)
        logits[..., 0] += 6.0  # most of each row on <start>, as in SD's maps
        p = np.exp(logits - logits.max(-1, keepdims=True))
        maps.append((p / p.sum(-1, keepdims=True)).astype(np.float16).tobytes())
    return {"SD1.5 block 320x64x64 (synthetic)": blocks, "SD1.5 cross-attn 8x4096x77 (synthetic)": maps}


def disk_speed(where: Path, nbytes: int = 256 << 20) -> float:
    """Bytes per second of write + fsync to one file in ``where``."""
    buf = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8).tobytes()
    path = where / "disk-speed.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    path.unlink()
    return nbytes / seconds


def measure(chunks: list[bytes], make: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """(size ratio, compress MB/s, decompress MB/s), best of ``repeats`` timings."""
    codec = make()
    raw = sum(map(len, chunks))
    packed: list[bytes] = []
    best_c = best_d = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        packed = [codec.encode(c) for c in chunks]
        best_c = min(best_c, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for p in packed:
            codec.decode(p)
        best_d = min(best_d, time.perf_counter() - t0)
    return raw / sum(map(len, packed)), raw / best_c / 1e6, raw / best_d / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="sampling steps of the tiny-sd1 recordings")
    ap.add_argument("--synthetic", type=int, default=4, help="SD1.5-size slabs of each kind")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to record and measure the disk (default: a temp dir)")
    ap.add_argument("--disk-speed", type=float, default=None, metavar="MB/S", help="instead of measuring the disk")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        where = Path(tmp)
        sets = {**record_tiny(where, args.steps), **synthetic(args.synthetic)}
        disk = args.disk_speed * 1e6 if args.disk_speed else disk_speed(where)
    print(f"disk: {disk / 1e6:.0f} MB/s ({'--disk-speed' if args.disk_speed else 'write + fsync of 256 MB'}); "
          "x plain = (raw / disk) / (compress time + compressed / disk)")
    print(f"{'data':<40} {'raw MB':>8} {'codec':<22} {'ratio':>6} {'comp MB/s':>10} {'dec MB/s':>9} {'x plain':>8}")
    for name, chunks in sets.items():
        raw = sum(map(len, chunks))
        for codec, make in CODECS.items():
            ratio, comp, dec = measure(chunks, make, args.repeats)
            plain = raw / disk
            packed = raw / (comp * 1e6) + raw / ratio / disk
            print(f"{name:<40} {raw / 1e6:>8.1f} {codec:<22} {ratio:>6.2f} {comp:>10.0f} {dec:>9.0f} {plain / packed:>8.2f}")


if __name__ == "__main__":
    main()

"""What recording costs: an SD1.5-size U-Net at 256x256 on this machine, modes interleaved.

The U-Net has SD1.5's real architecture (860M parameters, random weights from a fixed seed);
the VAE, text encoder (hidden size 768) and tokenizer are tiny, so the U-Net dominates as it
does in a real run. Every repeat runs each mode once, in turn; the script prints the median
wall time of one whole generation (entering and leaving the recorder included, so the final
flush to disk counts) and its ratio to the plain pipeline:

  plain      the diffusers pipeline alone
  blocks     dumpunet recording all 25 block outputs (fp16)
  attention  dumpunet recording every cross-attention Q·K (all layers, steps, heads; no blocks)
  peer       attention-map-diffusers 1.0, AttentionCapture(relations="image->text",
             timesteps="all", heads="all"), maps kept in memory (if the package is installed:
             pip install --no-deps attention-map-diffusers)

It also prints the best (fastest) time of each mode and its ratio to the best plain run — on a
shared machine other tenants only ever add time, so the minimum is the steadier estimate — the
bytes each mode writes per step, the share of the wall time the writer thread was busy, and
checks that every mode's image equals the plain one bit for bit.

    python benchmarks/record_overhead.py --repeats 3 --steps 4
    python benchmarks/record_overhead.py --device cuda --dtype fp16 --size 512 --steps 20   # benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_pipe(device: str = "cpu", dtype: torch.dtype = torch.float32):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dumpunet.recorder.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline("tiny-sd1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=768,
            attention_head_dim=8,
            layers_per_block=2,
        ).eval()
        tok = tiny.tokenizer
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768, intermediate_size=256, num_attention_heads=12, num_hidden_layers=1,
                vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            )
        ).eval()
    pipe = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(tiny.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


SIZE = 256


def generate(pipe, steps: int) -> np.ndarray:
    return pipe(
        prompt="a cute girl, pink hair", negative_prompt="bad anatomy", num_inference_steps=steps,
        height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(1), output_type="np",
    ).images


def run_mode(pipe, mode: str, steps: int, tmp: Path, k: int) -> tuple[float, np.ndarray, dict]:
    import dumpunet

    stats: dict = {}
    t0 = time.perf_counter()
    if mode == "plain":
        image = generate(pipe, steps)
    elif mode in ("blocks", "attention"):
        opts = {"blocks": "", "attention": None} if mode == "blocks" else {"blocks": "none", "attention": "qk"}
        path = tmp / f"{mode}-{k}.zarr"
        with dumpunet.record(pipe, path, progress=False, **opts) as rec:
            image = generate(pipe, steps)
        stats["busy"] = rec.writer.busy_seconds
        stats["bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        from attention_map_diffusers import AttentionCapture

        with AttentionCapture(pipe, relations="image->text", timesteps="all", heads="all"):
            image = generate(pipe, steps)
    return time.perf_counter() - t0, image, stats


def prewarm(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it before a timed run.

    On the VMs we measure on, memory the guest frees goes back to the host and its next first
    touch is slow (0.5-7 GB/s); whichever mode allocates more fresh memory than the one before
    it pays for that at random. Touching memory before every run puts all modes on equal terms.
    """
    if nbytes:
        a = np.empty(nbytes, np.uint8)
        a[::4096] = 1
        del a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--modes", default="plain,blocks,attention,peer")
    ap.add_argument("--prewarm", type=float, default=3.0,
                    help="GB of memory to touch before each timed run (0: off); see below")
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parent.parent.parent),
                    help="where the stores go (default: beside the repo, on disk; /dev/shm: no disk writeback)")
    ap.add_argument("--device", default="cpu", help="torch device of the pipeline (cuda: see benchmarks/gpu_check.sh)")
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="the pipeline's dtype (fp16 on a GPU)")
    ap.add_argument("--size", type=int, default=SIZE, help="image size")
    args = ap.parse_args()
    globals()["SIZE"] = args.size
    modes = [m for m in args.modes.split(",") if m != "peer" or importlib.util.find_spec("attention_map_diffusers")]
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "no GPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {gpu}; {args.device} {args.dtype} "
          f"{args.size}x{args.size}, {args.steps} steps; modes: {', '.join(modes)}")
    t = time.perf_counter()
    pipe = build_pipe(args.device, torch.float16 if args.dtype == "fp16" else torch.float32)
    print(f"built an SD1.5-size U-Net ({sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.0f}M params) "
          f"in {time.perf_counter() - t:.1f}s")
    generate(pipe, 1)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in modes}
    stats: dict[str, list[dict]] = {m: [] for m in modes}
    reference = None
    differs: set[str] = set()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for k in range(args.repeats):
            for mode in modes:
                prewarm(int(args.prewarm * 1e9))
                dt, image, st = run_mode(pipe, mode, args.steps, Path(d), k)
                reference = image if reference is None else reference
                if not np.array_equal(image, reference):
                    differs.add(mode)
                    if args.device == "cpu":
                        raise SystemExit(f"{mode}: the image differs from the plain pipeline's")
                times[mode].append(dt)
                stats[mode].append(st)
                print(f"  repeat {k + 1} {mode:<9} {dt:7.2f}s", flush=True)
    base = statistics.median(times["plain"])
    fastest = min(times["plain"])
    print(f"\n{'mode':<10} {'median s':>9} {'ratio':>7} {'best s':>7} {'ratio':>7} {'MB/step':>8} {'writer busy':>11}")
    for mode in modes:
        med = statistics.median(times[mode])
        best = min(times[mode])
        written = [s["bytes"] for s in stats[mode] if "bytes" in s]
        busy = [s["busy"] / t for s, t in zip(stats[mode], times[mode]) if "busy" in s]
        mb = f"{statistics.median(written) / args.steps / 1e6:8.1f}" if written else f"{'-':>8}"
        share = f"{100 * statistics.median(busy):10.1f}%" if busy else f"{'-':>11}"
        print(f"{mode:<10} {med:9.2f} {med / base:7.3f} {best:7.2f} {best / fastest:7.3f} {mb} {share}")
    if differs:  # a GPU may pick other kernels from run to run: say so rather than stop
        print(f"images differing from the first plain run: {', '.join(sorted(differs))}")
    else:
        print("every image is bit-identical to the plain pipeline's")


if __name__ == "__main__":
    main()

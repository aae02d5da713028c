"""Recording at GPU speed, simulated: the real recorder and writer on a stand-in U-Net that sleeps.

The stand-in is diffusers' own ``UNet2DConditionModel`` with the SD1.5 (or SDXL) configuration,
built on the meta device (no weights), whose block modules return preallocated fp16 tensors of the
real shapes and whose forward sleeps ``--step-ms`` per U-Net call, spread over the blocks
(``time.sleep`` leaves the CPU to the writer, as a GPU would). Attention layers run through the
recorder's real processor wrappers and to_q/to_k hooks; their q and k are preallocated tensors of
the real shapes. Everything else is dumpunet's: hooks, host buffers, attention maps (computed on
the CPU here, where a GPU would compute them on the device), the store writer and its queue.

Recording cross-attention is compared with a stand-in whose cross-attention layers compute their
attention on the CPU as diffusers' ``AttnProcessor2_0`` does (``scaled_dot_product_attention`` of
the fp16 q, k and v; the keys stand in for the values, of the same shape), in its plain and its
recorded runs alike (``--attention-compute cpu``, the default): the recorder computes the maps once
more beside the pipeline's own (a fused kernel does not hand them out), and that second
computation is what recording adds. Recording blocks only is compared with the sleeping stand-in
alone. ``--attention-compute none`` compares both with the sleeping stand-in, whose sleep stands
for the pipeline's attention as on a GPU. The "maps s" column is the recorder's own attention-map
time, which a GPU spends on the device, not the CPU.

One run prints, side by side:

- plain: the stand-in alone; recorded: with dumpunet recording (wall time until the store is
  closed and ``os.sync()`` returned, so every byte is on the disk); U-Net: of that, the time until
  the recorder's ``with`` block ended (hooks and copies included; the rest is the writer
  draining its queue); close: until the writer's ``close()`` returned (the rest is the final
  ``os.sync()``); bytes written;
- the disk's own speed in the same folder (write + fsync of the same byte count, interleaved);
- recorded ÷ max(plain, bytes ÷ disk speed): the distance from the physical limit;
- the time the U-Net waited on the writer's full queue, peak queue bytes and peak RSS growth;
- ``--writers default,before,2threads``: each mode with today's writer, with the writer before issue
  14's changes (one thread, no early write-back) and with 2 writer threads, interleaved in one run;
- fresh MB: host memory the recording's buffer pool allocated (the rest of its copies went into
  reused buffers); ``--shared-pool`` hands one pool to every recording of the script, as
  ``dumpunet record`` does to the runs of one job (prompt lists, pairs), where the default gives
  each recording its own, as a single recording has;
- growth: time and bytes per step at 20/50/100 steps and at 256²/512²/768² (blocks only).

    python benchmarks/record_rate.py --quick
    python benchmarks/record_rate.py --quick --writers default,before,2threads --no-growth
    python benchmarks/record_rate.py --steps 100 --repeats 3
    python benchmarks/record_rate.py --model sdxl --size 1024 --step-ms 100 --quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from dumpunet.diskspeed import measure_write_speed
from dumpunet.recorder import attention_capture
from dumpunet.recorder.attention_layers import AttentionOptions
from dumpunet.recorder.blocks import block_table, unet_blocks
from dumpunet.recorder.buffers import HostBuffers
from dumpunet.recorder.plan import RecordOptions
from dumpunet.recorder.recorder import Recorder
from dumpunet.store.writer import StoreWriter

SD15 = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
            attention_head_dim=8, layers_per_block=2)
SDXL = dict(sample_size=128, block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
            attention_head_dim=(5, 10, 20), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True)
MODELS = {"sd15": (SD15, 77), "sdxl": (SDXL, 77)}
WRITERS = {  # StoreWriter keyword arguments
    "default": {},
    "before": {"write_threads": 1, "write_back": False},  # the writer before issue 14's changes
    "2threads": {"write_threads": 2},  # a call's chunk files written by 2 threads
}
MODES = {
    "blocks": dict(blocks="", attention=None),
    "blocks+xattn": dict(blocks="", attention=AttentionOptions(features=("qk",))),
}


class _FakeProcessor:
    """Stands in for AttnProcessor2_0: calls to_q and to_k (the recorder's hooks see them), returns its input.

    With ``compute``, a cross-attention layer also computes its attention as AttnProcessor2_0 does
    (``scaled_dot_product_attention`` per head; the keys stand in for the values, of the same shape).
    """

    def __init__(self, compute: bool) -> None:
        self.compute = compute

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states if encoder_hidden_states is None else encoder_hidden_states)
        if self.compute and encoder_hidden_states is not None:
            b, heads = q.shape[0], int(attn.heads)
            qh = q.reshape(b, -1, heads, q.shape[-1] // heads).transpose(1, 2)
            kh = k.reshape(b, -1, heads, k.shape[-1] // heads).transpose(1, 2)
            torch.nn.functional.scaled_dot_product_attention(qh, kh, kh, scale=float(attn.scale))
        return hidden_states


class StandIn:
    """A diffusers U-Net on the meta device whose blocks return real-size tensors and whose calls sleep."""

    def __init__(self, model: str, size: int, step_ms: float, batch: int = 2, attention_compute: bool = False) -> None:
        from diffusers import UNet2DConditionModel

        config, self.n_tokens = MODELS[model]
        with torch.device("meta"):
            self.unet = UNet2DConditionModel(**config).eval()
        self.unet.set_attn_processor(_FakeProcessor(attention_compute))
        self.latent = (size // 8, size // 8)
        self.batch = batch
        self.units = unet_blocks(self.unet)
        self.table = {b.name: b for b in block_table(self.unet, self.latent)}
        self.sleep = step_ms / 1000 / len(self.units)
        self.context = torch.zeros(batch, self.n_tokens, config["cross_attention_dim"], dtype=torch.float16)
        self._patch()
        self.unet.forward = self._forward  # hooks on the U-Net still fire: nn.Module.__call__ calls this

    def _patch(self) -> None:
        mods = dict(self.unet.named_modules())
        outputs: dict[tuple[int, ...], torch.Tensor] = {}

        def tensor(shape: tuple[int, ...]) -> torch.Tensor:
            if shape not in outputs:
                outputs[shape] = torch.randn(shape, dtype=torch.float16)
            return outputs[shape]

        def returns(t: torch.Tensor):
            return lambda *a, **kw: t

        self.calls: list[tuple[list, torch.nn.Module]] = []  # per module in call order: its attention layers, itself
        for u in self.units:
            info = self.table[u.name]
            out = tensor((self.batch, *info.output_shape))
            hw = info.input_shape[1] * info.input_shape[2]  # attention runs before a block's upsampler
            for path in u.modules:
                m = mods[path]
                m.forward = returns(out)
                layers = []
                for sub in m.modules():
                    if hasattr(sub, "to_q") and hasattr(sub, "processor"):
                        inner = sub.to_q.out_features
                        n_kv = self.n_tokens if sub.is_cross_attention else hw
                        sub.to_q.forward = returns(tensor((self.batch, hw, inner)))
                        sub.to_k.forward = returns(tensor((self.batch, n_kv, sub.to_k.out_features)))
                        layers.append((sub, tensor((self.batch, hw, inner))))
                self.calls.append((layers, m))

    def _forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        x = sample
        per_module = self.sleep * len(self.units) / len(self.calls)
        for layers, m in self.calls:
            time.sleep(per_module)
            for attn, tokens in layers:  # as the transformer's own forward calls them
                attn(tokens, encoder_hidden_states=self.context if attn.is_cross_attention else None)
            x = m(x)
        return SimpleNamespace(sample=sample)

    def pipe(self, steps: int) -> SimpleNamespace:
        sched = SimpleNamespace(num_inference_steps=steps, config={}, order=1)
        return SimpleNamespace(unet=self.unet, scheduler=sched, do_classifier_free_guidance=True, vae_scale_factor=8)

    def generate(self, steps: int) -> None:
        sample = torch.zeros(self.batch, 4, *self.latent, dtype=torch.float16)
        for i in range(steps):
            self.unet(sample, 999.0 - i * (999.0 / steps), encoder_hidden_states=self.context)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Peak RSS and writer queue bytes, sampled every 5 ms while a run goes."""

    def __init__(self, writer: StoreWriter | None = None) -> None:
        self.writer, self.base, self.peak_rss, self.peak_queue = writer, rss_bytes(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_rss = max(self.peak_rss, rss_bytes() - self.base)
            if self.writer is not None:
                self.peak_queue = max(self.peak_queue, self.writer.queue_bytes)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def prewarm(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it (see benchmarks/record_overhead.py: on the VMs we
    measure on, a first touch of memory runs at 0.15-1 GB/s and would decide the result at random)."""
    if nbytes:
        a = np.empty(nbytes, np.uint8)
        a[::4096] = 1
        del a


def run_plain(standin: StandIn, steps: int) -> float:
    t0 = time.perf_counter()
    standin.generate(steps)
    return time.perf_counter() - t0


@contextmanager
def map_timer() -> Iterator[SimpleNamespace]:
    """Add up the time the recorder spends computing attention maps (its ``attention_probs``) in ``.seconds``."""
    spent = SimpleNamespace(seconds=0.0)
    inner = attention_capture.attention_probs

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.seconds += time.perf_counter() - t0

    attention_capture.attention_probs = timed
    try:
        yield spent
    finally:
        attention_capture.attention_probs = inner


def run_recorded(standin: StandIn, steps: int, mode: str, where: Path, queue_bytes: int, writer_kw: dict | None = None,
                 buffers: HostBuffers | None = None) -> dict:
    path = where / "rate.zarr"
    writer = StoreWriter(path, model={}, versions={}, max_queue_bytes=queue_bytes, **(writer_kw or {}))
    opts = RecordOptions(**MODES[mode])
    rec = Recorder(standin.pipe(steps), writer=writer, options=opts, progress=False, buffers=buffers)
    fresh0 = rec.buffers.fresh_bytes
    t0 = time.perf_counter()
    with Sampler(writer) as sampler, map_timer() as maps:
        with rec:
            standin.generate(steps)
        t_exit = time.perf_counter()
        writer.close()
        t_close = time.perf_counter()
        os.sync()
    t_sync = time.perf_counter()
    nbytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    shutil.rmtree(path)
    return dict(exit=t_exit - t0, close=t_close - t0, sync=t_sync - t0, bytes=nbytes, waited=rec.writer_wait_seconds,
                busy=writer.busy_seconds, maps=maps.seconds, rss=sampler.peak_rss, queue=max(sampler.peak_queue, writer.peak_queue_bytes),
                fresh=rec.buffers.fresh_bytes - fresh0)


def disk_speed(where: Path, nbytes: int) -> float:
    return measure_write_speed(where, nbytes)


def gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="sd15")
    ap.add_argument("--size", type=int, default=None, help="image size (default: 512 for sd15, 1024 for sdxl)")
    ap.add_argument("--step-ms", type=float, default=50.0, help="stand-in time per U-Net call (50 ms = 20 steps/s)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds of plain / disk / each mode (default 2; 1 with --quick)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--writers", default="default", help=f"store writer variants, each mode with each: {','.join(WRITERS)}")
    ap.add_argument("--attention-compute", choices=("cpu", "none"), default="cpu",
                    help="cpu: for the cross-attention modes the stand-in computes its cross-attention on the CPU, "
                         "plain and recorded; none: its sleep stands for it")
    ap.add_argument("--queue-mb", type=float, default=1024, help="the writer's queue bound (max_queue_bytes)")
    ap.add_argument("--shared-pool", action="store_true",
                    help="one host-buffer pool for every recording of the script (as the runs of one job share one)")
    ap.add_argument("--growth-steps", default="20,50,100")
    ap.add_argument("--growth-sizes", default="256,512,768")
    ap.add_argument("--growth-at", type=int, default=20, help="steps of each size in the size growth check")
    ap.add_argument("--no-growth", action="store_true", help="skip the growth rows")
    ap.add_argument("--quick", action="store_true", help="a short run: 10 steps, 1 repeat unless --repeats, growth 5/10/20 steps and 5 steps per size")
    ap.add_argument("--prewarm", type=float, default=3.0, help="GB of memory to touch before each timed run (0: off)")
    ap.add_argument("--dir", type=Path, help="where to write (default: a temp dir beside the repo, else /tmp)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.growth_steps, args.growth_at = 10, "5,10,20", 5
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    size = args.size or (1024 if args.model == "sdxl" else 512)
    modes = [m for m in args.modes.split(",") if m]
    writers = [w for w in args.writers.split(",") if w]
    if unknown := [x for x in modes if x not in MODES] + [x for x in writers if x not in WRITERS]:
        ap.error(f"unknown mode or writer {unknown[0]!r}: modes {', '.join(MODES)}; writers {', '.join(WRITERS)}")
    runs = [(m, w) for m in modes for w in writers]
    base = args.dir or Path(__file__).resolve().parents[2]
    where = Path(tempfile.mkdtemp(prefix="dumpunet-rate-", dir=base if os.access(base, os.W_OK) else None))
    queue = int(args.queue_mb * 2**20)
    compute = args.attention_compute == "cpu"
    computes = {m: compute and MODES[m]["attention"] is not None for m in modes}  # which stand-in a mode runs on
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.model} {size}x{size}, batch 2 (cfg), fp16, stand-in {args.step_ms:.0f} ms per call "
          f"({1000 / args.step_ms:.0f} steps/s), cross-attention computed by the stand-in: {args.attention_compute}; "
          f"{args.steps} steps, {args.repeats} repeat(s); writing in {where}; torch {torch.__version__}, {os.cpu_count()} CPUs")
    try:
        standins = {c: StandIn(args.model, size, args.step_ms, attention_compute=c) for c in sorted(set(computes.values()) | {False})}
        for si in standins.values():
            si.generate(1)
        standin = standins[False]
        res: dict[tuple[str, str], list[dict]] = {r: [] for r in runs}
        plains: dict[bool, list[float]] = {c: [] for c in standins}
        disk: list[float] = []
        warm = int(args.prewarm * 1e9)
        pool = HostBuffers(0) if args.shared_pool else None
        for _ in range(args.repeats):
            for c, si in standins.items():
                prewarm(warm)
                plains[c].append(run_plain(si, args.steps))
            for m, w in runs:
                prewarm(warm)
                r = run_recorded(standins[computes[m]], args.steps, m, where, queue, WRITERS[w], pool)
                disk.append(disk_speed(where, r["bytes"]))
                res[(m, w)].append(r)
        plain = {c: statistics.median(x) for c, x in plains.items()}
        p, d = plain[False], statistics.median(disk)
        print(f"\nplain stand-in: {p:.2f} s ({args.steps / p:.1f} steps/s; {min(plains[False]):.2f}-{max(plains[False]):.2f})", end="")
        if True in plain:
            print(f"; with its cross-attention computed on the CPU: {plain[True]:.2f} s ({min(plains[True]):.2f}-{max(plains[True]):.2f})", end="")
        print(f"\ndisk write+fsync in {where.parent}: {gb(d)} GB/s (median of {len(disk)}, {gb(min(disk))}-{gb(max(disk))}); "
              f"medians of {args.repeats}; limit = max(plain of the mode's stand-in, bytes / disk)\n")
        print(f"{'mode':<13} {'writer':<8} {'recorded s':>10} {'U-Net s':>8} {'close s':>8} {'maps s':>7} {'GB':>6} {'MB/step':>8} "
              f"{'bytes/disk s':>12} {'limit s':>8} {'ratio':>6} {'ratios':>11} {'waited s':>8} {'peak queue MB':>13} {'peak RSS +MB':>12} "
              f"{'fresh MB':>8}")
        for m, w in runs:
            rs = res[(m, w)]
            nb = statistics.median(r["bytes"] for r in rs)
            limit = max(plain[computes[m]], nb / d)
            ratios = [r["sync"] / limit for r in rs]

            def med(key: str, rs: list[dict] = rs) -> float:
                return statistics.median(r[key] for r in rs)

            print(f"{m:<13} {w:<8} {med('sync'):10.2f} {med('exit'):8.2f} {med('close'):8.2f} {med('maps'):7.2f} {gb(nb):>6} "
                  f"{nb / args.steps / 1e6:8.1f} {nb / d:12.2f} {limit:8.2f} {med('sync') / limit:6.2f} "
                  f"{min(ratios):5.2f}-{max(ratios):<5.2f} {med('waited'):8.2f} "
                  f"{max(r['queue'] for r in rs) / 2**20:13.0f} {max(r['rss'] for r in rs) / 2**20:12.0f} {med('fresh') / 2**20:8.0f}")
        if args.no_growth:
            return
        print("\ngrowth (blocks only, default writer; one run each): time and bytes per step should stay constant")
        print(f"{'run':<16} {'steps':>5} {'s':>7} {'ms/step':>8} {'MB/step':>8} {'disk-limit ms/step':>18} {'peak RSS +MB':>12}")
        rows = [(f"{size}x{size}", size, int(n)) for n in args.growth_steps.split(",")]
        rows += [(f"{s}x{s}", int(s), args.growth_at) for s in args.growth_sizes.split(",")]
        for label, s, n in rows:
            si = standin if s == size else StandIn(args.model, s, args.step_ms)
            prewarm(warm)
            r = run_recorded(si, n, "blocks", where, queue)
            print(f"{label:<16} {n:5d} {r['sync']:7.2f} {1000 * r['sync'] / n:8.1f} {r['bytes'] / n / 1e6:8.1f} "
                  f"{1000 * max(r['bytes'] / d, si.sleep * len(si.units) * n) / n:18.1f} {r['rss'] / 2**20:12.0f}")
    finally:
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

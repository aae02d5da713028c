"""One ``dumpunet record`` (or ``sweep``) invocation: check, load, estimate, generate while recording.

``prepare`` turns a :class:`~dumpunet.recorder.request.RecordRequest` into a :class:`Job` (the
request with its seed drawn, the loaded pipeline); ``estimate`` sizes it from the recording
plan; ``execute`` generates every run of it into one store.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dumpunet.a1111_chunks import expand_embeddings
from dumpunet.errors import OptionError, RecordError
from dumpunet.recorder.a1111_run import a1111_conditioning, uses_a1111
from dumpunet.recorder.blocks import unet_blocks
from dumpunet.recorder.buffers import HostBuffers
from dumpunet.recorder.conditioning import BlockConditioning
from dumpunet.recorder.models import load_pipeline
from dumpunet.recorder.networks import apply_networks, resolve_loras
from dumpunet.recorder.plan import RecordingPlan, Selection, token_length, token_row
from dumpunet.recorder.recorder import Recorder, open_writer
from dumpunet.recorder.request import RecordRequest, RunPrompts, check, resolve_seed, run_prompts, swept_blocks
from dumpunet.recorder.samplers import make_scheduler, resolve_sampler
from dumpunet.store import schema

__all__ = ["DiskTime", "Estimate", "Job", "RecordRequest", "Summary", "check_budget", "disk_time", "estimate", "execute",
           "generation_kwargs", "load", "prepare", "record_run", "reseeded"]


@dataclass(frozen=True)
class Job:
    """A checked request, its seed drawn, with the pipeline it runs on."""

    req: RecordRequest
    pipe: Any
    model_info: dict[str, Any]
    scheduler_config: Any = None  # the loaded model's, from which every run's sampler is made (None: the pipeline's now)

    @property
    def names(self) -> tuple[list[str], dict[str, str]]:
        """The U-Net's block names and the module-path aliases of each."""
        units = unet_blocks(self.pipe.unet)
        return [u.name for u in units], {m: u.name for u in units for m in u.modules}

    @property
    def no_xattn(self) -> frozenset[str]:
        """Blocks without cross-attention: text inserted there reaches nothing."""
        return frozenset(u.name for u in unet_blocks(self.pipe.unet) if not u.cross_attention)


@dataclass(frozen=True)
class Estimate:
    """Bytes a recording will write, before it starts."""

    runs: int
    calls: int
    blocks: int
    block_bytes: int
    attention_layers: int
    attention_bytes: int
    self_attention_bytes: int
    shape_note: str
    swept_without_xattn: tuple[str, ...] = ()  # sweep targets without cross-attention
    skip_no_xattn: bool = False  # ... left out (--skip-no-xattn) rather than recorded
    unet_calls: int = 0  # U-Net calls per run, recorded or not (0: as many as recorded)

    @property
    def run_bytes(self) -> int:
        return self.block_bytes + self.attention_bytes

    @property
    def total_bytes(self) -> int:
        return self.run_bytes * self.runs

    def lines(self) -> list[str]:
        hb = schema.human_bytes
        runs = f" in all, {hb(self.run_bytes)} per run x {self.runs} runs" if self.runs > 1 else ""
        out = [
            f"size estimate: {hb(self.total_bytes)} raw{runs} ({self.shape_note})",
            f"  blocks:    {hb(self.block_bytes)} ({self.blocks} blocks x {self.calls} U-Net calls)",
        ]
        if self.attention_layers:
            out.append(f"  attention: {hb(self.attention_bytes)} ({self.attention_layers} layers"
                       + (f", self-attention {hb(self.self_attention_bytes)})" if self.self_attention_bytes else ")"))
        blind = self.swept_without_xattn
        names = ", ".join(blind)
        if blind and self.skip_no_xattn:
            out.append(f"note: --skip-no-xattn leaves out {len(blind)} block(s) without cross-attention: {names}")
        elif blind:
            out.append(f"warning: {len(blind)} swept block(s) have no cross-attention, so their runs equal the base "
                       f"pixel for pixel: {names}; --skip-no-xattn leaves them out")
        if self.self_attention_bytes > LARGE_BYTES:
            out.append(
                f"warning: self-attention alone is {hb(self.self_attention_bytes * self.runs)}; narrow it with "
                "--self-attention-blocks/-steps, --self-attention-heads mean, --query-region or --query-stride"
            )
        elif self.total_bytes > LARGE_BYTES:
            out.append(f"warning: this recording is large ({hb(self.total_bytes)}); --dry-run shows the estimate only")
        return out


LARGE_BYTES = 10 * 1000**3
"""Estimates above this get a warning line."""

MEASURE_FROM_BYTES = 1000**3
"""Recordings smaller than this get no duration line unless --disk-speed is given: the disk is not
measured for them (a 64 MB measurement costs more than such a recording's writes)."""

GPU_CALL_SECONDS = 0.05
"""What a U-Net call takes on a GPU, for the disk-bound warning: SD1.5 at 512², batch 2, is
25-50 ms on current GPUs (and SDXL at 1024² ~100-200 ms, so the warning errs towards warning)."""

CUT_BYTES_OPTIONS = ("--record-steps", "--blocks", "--attention-blocks", "--attention-heads mean", "--attention-tokens",
                     "--attention none", "--self-attention-heads mean", "--query-stride")
"""The options that cut a recording's bytes, named by the disk-bound warning (all exist on record and sweep)."""


@dataclass(frozen=True)
class DiskTime:
    """How long the disk needs for a recording, and whether a GPU U-Net would outrun it."""

    total_bytes: int
    calls: int  # U-Net calls over all runs, recorded or not (the time the U-Net gives the disk)
    bytes_per_second: float
    source: str  # "--disk-speed" or where it was measured
    call_seconds: float | None = None  # a U-Net call's time on this device; None: not disk-bound (CPU)

    @property
    def seconds(self) -> float:
        return self.total_bytes / self.bytes_per_second

    @property
    def disk_bound(self) -> bool:
        return self.call_seconds is not None and self.seconds > self.calls * self.call_seconds

    def lines(self) -> list[str]:
        """The estimate's duration line, and the disk-bound warning where one is due.

        Examples
        --------
        >>> for line in DiskTime(2_720_000_000, 20, 1e9, "--disk-speed", call_seconds=0.05).lines():
        ...     print(line)
        disk time: at least 2.7 s to write 2.72 GB at 1000 MB/s (--disk-speed)
        warning: disk-bound: the disk needs 136 ms per U-Net call, a GPU computes one in about 50 ms; cut bytes with --record-steps, --blocks, --attention-blocks, --attention-heads mean, --attention-tokens, --attention none, --self-attention-heads mean, --query-stride
        """
        mb = self.bytes_per_second / 1e6
        out = [f"disk time: at least {self.seconds:.1f} s to write {schema.human_bytes(self.total_bytes)} "
               f"at {mb:.0f} MB/s ({self.source})"]
        if self.disk_bound:
            assert self.call_seconds is not None
            per_call = 1000 * self.seconds / max(self.calls, 1)
            out.append(f"warning: disk-bound: the disk needs {per_call:.0f} ms per U-Net call, a GPU computes one in "
                       f"about {1000 * self.call_seconds:.0f} ms; cut bytes with {', '.join(CUT_BYTES_OPTIONS)}")
        return out


def disk_time(job: Job, est: Estimate, *, disk_speed_mb: float | None, cache: Path | None = None) -> DiskTime | None:
    """The disk time of a recording: from ``--disk-speed`` (MB/s), else the folder's measured speed (cached).

    None for a recording under :data:`MEASURE_FROM_BYTES` without ``--disk-speed``, or when the
    speed cannot be measured.
    """
    from dumpunet.diskspeed import cached_speed

    target = job.req.out.resolve().parent
    folder = target if target.exists() else Path.cwd()
    if disk_speed_mb is not None:
        speed, source = disk_speed_mb * 1e6, "--disk-speed"
    elif est.total_bytes < MEASURE_FROM_BYTES:
        return None
    else:
        measured = cached_speed(folder, cache=cache)
        if measured is None:
            return None
        speed, source = measured, f"measured in {folder}, cached; --disk-speed overrides"
    device = getattr(job.pipe, "device", None)
    on_gpu = getattr(device, "type", str(device)) == "cuda"
    return DiskTime(est.total_bytes, (est.unet_calls or est.calls) * est.runs, speed, source, GPU_CALL_SECONDS if on_gpu else None)


def prepare(req: RecordRequest) -> Job:
    """Check the request against the disk, draw its seed, load the pipeline with its sampler, LoRAs and embeddings.

    The job's request has the ``<lora:...>`` tags cut out of its prompts; the model attributes
    record the LoRAs and embeddings.
    """
    check(req)
    return load(resolve_seed(req))


def load(req: RecordRequest) -> Job:
    """Load the pipeline of a request whose seed is drawn, with its sampler, LoRAs and embeddings (see :func:`prepare`)."""
    loras = resolve_loras(req.loras, req.network_tags(), req.lora_dir)  # files found before the model loads
    missing = [str(p) for p in req.embeddings if not Path(p).is_file()]
    if missing:
        raise RecordError(f"no embedding file at {missing[0]}")
    req = req.without_networks()
    device = req.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe, model_info = load_pipeline(req.model, img2img=req.init_image is not None, device=device, config=req.config,
                                     prediction_type=req.prediction_type)
    model_info = {**model_info, **apply_networks(pipe, loras=loras, embeddings=[Path(p) for p in req.embeddings])}
    job = reseeded(Job(req, pipe, model_info, pipe.scheduler.config), req)
    Selection.of(pipe.unet, req.record_options(), what="--blocks")
    run_prompts(req, *job.names, job.no_xattn)  # layer-prompt block specs
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return job


def reseeded(job: Job, req: RecordRequest) -> Job:
    """The job for ``req`` (the same options, another prompt or seed) on the same pipeline, its sampler made for the seed.

    Samplers that do not draw from the pipeline's generator (DPM++ SDE) are seeded when made.
    """
    pipe = job.pipe
    config = job.scheduler_config if job.scheduler_config is not None else pipe.scheduler.config
    pipe.scheduler = make_scheduler(req.sampler, config, seed=req.seed, schedule=req.schedule)
    try:  # e.g. LCM takes at most its original_inference_steps (50)
        pipe.scheduler.set_timesteps(req.sampling_steps)
    except ValueError as exc:
        raise OptionError(f"sampler {req.sampler!r} with --sampling-steps {req.sampling_steps}: {' '.join(str(exc).split())}") from None
    return replace(job, req=req)


def _size(req: RecordRequest, pipe: Any) -> tuple[int, int]:
    default = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return (req.height or default, req.width or default)


def estimate(job: Job) -> Estimate:
    """Estimate the bytes of a recording from its plan and the sampler's U-Net calls per step."""
    req, pipe = job.req, job.pipe
    h, w = _size(req, pipe)
    sf = int(pipe.vae_scale_factor)
    guidance = 2 if req.cfg > 1.0 else 1
    plan = RecordingPlan.build(pipe.unet, req.record_options(), latent_hw=(h // sf, w // sf),
                               total_steps=req.executed_steps, n_images=req.batch_size, n_guidance=guidance,
                               n_tokens=token_length(pipe))
    sched = make_scheduler(req.sampler, pipe.scheduler.config, seed=req.seed, schedule=req.schedule)
    sched.set_timesteps(req.sampling_steps)
    calls = max(1, round(len(plan.record_steps) * len(sched.timesteps) / req.sampling_steps))
    cross, own = plan.layer_bytes(calls, cross=True), plan.layer_bytes(calls, cross=False)
    no_xattn = job.no_xattn
    blind = swept_blocks(req, *job.names, no_xattn)[1] if req.sweep_insert is not None else []
    return Estimate(
        runs=len(run_prompts(req, *job.names, no_xattn)[0]),
        calls=calls,
        blocks=len(plan.blocks),
        block_bytes=plan.block_call_bytes() * calls,
        attention_layers=len(plan.layers),
        attention_bytes=cross + own,
        self_attention_bytes=own,
        shape_note=f"{w}x{h}, batch {req.batch_size}, {'cfg on' if guidance == 2 else 'cfg off'}, {req.dtype}",
        swept_without_xattn=tuple(blind),
        skip_no_xattn=req.skip_no_xattn,
        unet_calls=max(1, round(req.executed_steps * len(sched.timesteps) / req.sampling_steps)),
    )


def check_budget(req: RecordRequest, est: Estimate) -> None:
    """Refuse a recording larger than --max-bytes (default: the free space where it goes)."""
    target = req.out.resolve().parent
    free = shutil.disk_usage(target if target.exists() else Path.cwd()).free
    limit = req.max_bytes if req.max_bytes is not None else free
    if est.total_bytes > limit:
        what = f"--max-bytes {schema.human_bytes(limit)}" if req.max_bytes is not None else f"the {schema.human_bytes(free)} free on {target}"
        raise RecordError(
            f"the recording would write about {schema.human_bytes(est.total_bytes)}, more than {what}; "
            "record fewer blocks, steps or attention layers (or raise --max-bytes)"
        )


def _encoded(pipe: Any, text: str) -> schema.TokenRow:
    tok = pipe.tokenizer
    text = expand_embeddings(tok, text)  # as the pipeline's encode_prompt reads a multi-vector embedding
    return token_row(tok, tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids)


@dataclass(frozen=True)
class Summary:
    """What ``execute`` recorded, for the CLI's last line."""

    out: Path
    seed: int
    steps: int  # sampler steps each run executed
    calls: int  # U-Net calls over all runs
    runs: tuple[str, ...]


def execute(job: Job) -> Summary:
    """Generate every run of the job while recording into ``req.out``; return a summary for the CLI."""
    req, pipe = job.req, job.pipe
    runs, pairs = run_prompts(req, *job.names, job.no_xattn)
    base_kwargs = generation_kwargs(job)
    writer = open_writer(req.out, pipe, job.model_info, pairs=pairs, overwrite=req.overwrite)
    calls = 0
    buffers = HostBuffers(0)  # the runs reuse each other's host buffers
    try:
        for run in runs:
            calls += record_run(job, writer, run, base_kwargs, buffers=buffers)
    finally:
        writer.close()
    return Summary(req.out, req.seed, req.executed_steps, calls, tuple(r.name for r in runs))


def generation_kwargs(job: Job) -> dict[str, Any]:
    """The pipeline's keyword arguments every run of the job shares: steps, cfg, batch, size or init image."""
    req, pipe = job.req, job.pipe
    h, w = _size(req, pipe)
    base_kwargs: dict[str, Any] = dict(
        num_inference_steps=req.sampling_steps,
        guidance_scale=req.cfg,
        num_images_per_prompt=req.batch_size,
        output_type="np",
    )
    if req.init_image is None:
        base_kwargs.update(height=h, width=w)
    else:
        from PIL import Image

        try:
            init = Image.open(req.init_image).convert("RGB").resize((w, h))
        except OSError as exc:
            raise RecordError(f"cannot read init image {req.init_image}: {exc}") from None
        base_kwargs.update(image=init, strength=req.strength)
    return base_kwargs


def record_run(job: Job, writer: Any, run: RunPrompts, base_kwargs: dict[str, Any], *,
               on_step: Callable[[int], None] | None = None, prompt_line: int | None = None,
               buffers: HostBuffers | None = None) -> int:
    """Generate one run into an open store writer; return its U-Net calls.

    ``on_step`` replaces the run's own progress bar (``record --prompts``: one bar over every
    prompt); ``prompt_line`` goes into the run's attributes; ``buffers``: host buffers shared
    with the job's other runs (:class:`~dumpunet.recorder.recorder.Recorder`).
    """
    req, pipe = job.req, job.pipe
    attrs = schema.RunAttrs(
        prompt=run.prompt,
        negative_prompt=run.negative,
        seed=req.seed,
        seeds=tuple(req.seed + i for i in range(req.batch_size)),
        sampler=resolve_sampler(req.sampler, req.schedule).name,
        cfg=req.cfg,
        requested_steps=req.sampling_steps,
        init_image=str(req.init_image) if req.init_image else None,
        strength=req.strength if req.init_image else None,
        prompt_line=prompt_line,
        extra=dict(req.extra),
    )
    kwargs = dict(base_kwargs, generator=[torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.batch_size)])
    conditioning = None
    options, steps = req.a1111_options(), req.executed_steps
    if run.positive_blocks is not None or run.negative_blocks is not None:
        names, _ = job.names
        positive = run.positive_blocks or {b: run.prompt for b in names}
        negative = run.negative_blocks or ({b: run.negative for b in names} if run.negative else None)
        if any(uses_a1111(pipe, text, options, steps) for text in {*positive.values(), *(negative or {}).values()}):
            raise RecordError("A1111 prompt syntax (or --clip-skip, or a prompt over 75 tokens) with per-block prompts is not supported yet")
        conditioning = BlockConditioning(pipe, positive, negative, num_images=req.batch_size, guidance_scale=req.cfg)
        kwargs.update(prompt=conditioning.pipeline_prompt, negative_prompt=conditioning.pipeline_negative)
        uncond, cond = schema.GUIDANCE_LABELS
        distinct = set(positive.values()) | set((negative or {}).values())
        attrs = replace(attrs, block_prompts={cond: positive, **({uncond: negative} if negative else {})},
                        prompt_tokens={text: _encoded(pipe, text) for text in sorted(distinct)})
    elif uses_a1111(pipe, run.prompt, options, steps) or uses_a1111(pipe, run.negative, options, steps):
        embeds, tokens = a1111_conditioning(pipe, run.prompt, run.negative, options, steps=steps,
                                            guidance=bool(req.cfg > 1.0))
        kwargs.update(embeds)
        attrs = replace(attrs, tokens=tokens)
    else:
        kwargs.update(prompt=run.prompt, negative_prompt=run.negative or None)
    rec = Recorder(pipe, writer=writer, options=req.record_options(), run=run.name, attrs=attrs,
                   progress=not req.quiet and on_step is None, on_step=on_step, buffers=buffers)
    if conditioning is not None:
        with conditioning, rec:
            images = np.asarray(pipe(**kwargs).images)
            rec.set_images((images * 255).round().astype(np.uint8))
    else:
        with rec:
            images = np.asarray(pipe(**kwargs).images)
            rec.set_images((images * 255).round().astype(np.uint8))
    return rec.n_calls

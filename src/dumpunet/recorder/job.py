"""One ``dumpunet record`` (or ``sweep``) invocation: load, check, estimate, generate while recording."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dumpunet.store import schema
from dumpunet.errors import RecordError
from dumpunet.prompts import parse_layer_prompt
from dumpunet.recorder.attention_capture import AttentionOptions, feature_shape, query_grid, select_layers
from dumpunet.recorder.blocks import block_table, select_blocks, unet_blocks
from dumpunet.recorder.conditioning import BlockConditioning
from dumpunet.recorder.models import load_pipeline
from dumpunet.recorder.samplers import make_scheduler
from dumpunet.recorder.recorder import Recorder
from dumpunet.specs import parse_blocks, parse_ints
from dumpunet.store.schema import PairInfo
from dumpunet.store.writer import StoreWriter


@dataclass
class RecordRequest:
    """Everything ``dumpunet record`` takes, validated before any model is loaded."""

    out: Path
    model: str = "tiny-sd1"
    config: Path | None = None
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "Euler a"
    cfg: float = 7.0
    seed: int = -1
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    blocks: str = ""
    record_steps: str = ""
    inputs: bool = False
    dtype: str = "fp16"
    attention: str = "qk"
    attention_blocks: str = ""
    self_attention: bool = False
    self_attention_blocks: str = ""
    self_attention_steps: str = ""
    self_attention_heads: str = "all"
    query_region: str | None = None
    query_stride: int = 1
    max_bytes: int | None = None
    pair: bool = False
    base: str | None = None
    sweep_insert: str | None = None
    sweep_blocks: str = ""
    device: str | None = None
    init_image: Path | None = None
    strength: float = 0.6
    overwrite: bool = False
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise RecordError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise RecordError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype not in schema.RECORD_DTYPES:
            raise RecordError(f"--dtype must be one of {', '.join(schema.RECORD_DTYPES)}, got {self.dtype!r}")
        if not 0.0 < self.strength <= 1.0:
            raise RecordError(f"--strength must be in (0, 1], got {self.strength}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                raise RecordError(f"--{name} must be a positive multiple of 8, got {v}")
        if self.init_image is not None and not Path(self.init_image).is_file():
            raise RecordError(f"no init image at {self.init_image}")
        if self.seed < 0:
            self.seed = int(torch.randint(0, 2**32 - 1, (1,)).item())
        # Everything that can be checked without weights is checked now.
        if self.record_steps.strip():
            parse_ints(self.record_steps, 1, self.executed_steps, noun="step", what="--record-steps")
        if self.self_attention_steps.strip():
            parse_ints(self.self_attention_steps, 1, self.executed_steps, noun="step", what="--self-attention-steps")
        self.attention_options()
        positive, negative = parse_layer_prompt(self.prompt), parse_layer_prompt(self.negative_prompt)
        if self.pair and self.base is None and not (positive.has_groups or negative.has_groups):
            raise RecordError(
                "--pair needs a layer-prompt group like 'a (~: M00: excellent :~) girl' in --prompt or "
                "--negative-prompt, or --base TEXT to compare against"
            )
        if self.out.exists() and not self.overwrite:
            raise RecordError(f"{self.out} already exists; choose another --out or pass --overwrite")

    @property
    def executed_steps(self) -> int:
        """Sampler steps that run: all of them, or the last ``strength`` share for img2img."""
        if self.init_image is None:
            return self.steps
        n = min(int(self.steps * self.strength), self.steps)
        if n < 1:
            raise RecordError(f"--strength {self.strength} with --steps {self.steps} leaves no step to run")
        return n

    def attention_options(self) -> AttentionOptions | None:
        features = AttentionOptions.parse_features(self.attention)
        if not features and not self.self_attention:
            return None
        region = None
        if self.query_region:
            try:
                region = tuple(float(x) for x in self.query_region.split(","))
            except ValueError:
                region = ()
            if len(region) != 4:
                raise RecordError(f"--query-region takes x0,y0,x1,y1 as fractions of the image, got {self.query_region!r}")
        return AttentionOptions(
            features=features,
            blocks=self.attention_blocks,
            self_attention=self.self_attention,
            self_blocks=self.self_attention_blocks,
            self_steps=self.self_attention_steps,
            self_heads=self.self_attention_heads,
            query_region=region,  # type: ignore[arg-type]
            query_stride=self.query_stride,
        )


@dataclass(frozen=True)
class RunPlan:
    """One generation of a store: its run name and the prompt every block gets."""

    name: str
    prompt: str
    negative: str
    positive_blocks: dict[str, str] | None = None  # None: one prompt for every block
    negative_blocks: dict[str, str] | None = None


def plan_runs(req: RecordRequest, blocks: list[str], aliases: dict[str, str]) -> tuple[list[RunPlan], list[dict[str, str]]]:
    """Decide the runs (and pairs) a request records: one plain run, one layered run, a pair, or a sweep."""

    def layered(name: str, prompt: str, negative: str) -> RunPlan:
        pos, neg = parse_layer_prompt(prompt), parse_layer_prompt(negative)
        if not (pos.has_groups or neg.has_groups):
            return RunPlan(name, prompt, negative)
        return RunPlan(
            name,
            prompt,
            negative,
            pos.resolve(blocks, aliases),
            neg.resolve(blocks, aliases) if negative else None,
        )

    if req.sweep_insert is not None:
        insert = req.sweep_insert.replace("\\", "\\\\").replace(";", "\\;").replace(":", "\\:")
        swept = parse_blocks(req.sweep_blocks, blocks, aliases=aliases, what="--blocks")
        runs = [layered(b, f"{req.prompt}, (~:{b}:{insert}:~)", req.negative_prompt) for b in swept]
        base = parse_layer_prompt(runs[0].prompt).base() if runs else req.prompt
        plans = [RunPlan("base", base, req.negative_prompt), *runs]
        return plans, [{"base": "base", "layered": b, "label": b} for b in swept]
    main = layered("layered" if req.pair else "main", req.prompt, req.negative_prompt)
    if not req.pair:
        return [main], []
    if req.base is not None:
        base = RunPlan("base", req.base, req.negative_prompt)
    else:
        base = RunPlan("base", parse_layer_prompt(req.prompt).base(), parse_layer_prompt(req.negative_prompt).base())
    return [base, main], [{"base": "base", "layered": "layered", "label": "layered"}]


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

    @property
    def total_bytes(self) -> int:
        return (self.block_bytes + self.attention_bytes) * self.runs

    def lines(self) -> list[str]:
        hb = schema.human_bytes
        runs = f" x {self.runs} runs" if self.runs > 1 else ""
        out = [
            f"size estimate: {hb(self.total_bytes)} raw{runs} ({self.shape_note})",
            f"  blocks:    {hb(self.block_bytes)} ({self.blocks} blocks x {self.calls} U-Net calls)",
        ]
        if self.attention_layers:
            out.append(f"  attention: {hb(self.attention_bytes)} ({self.attention_layers} layers"
                       + (f", self-attention {hb(self.self_attention_bytes)})" if self.self_attention_bytes else ")"))
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


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _names(pipe: Any) -> tuple[list[str], dict[str, str]]:
    units = unet_blocks(pipe.unet)
    return [u.name for u in units], {m: u.name for u in units for m in u.modules}


def prepare(req: RecordRequest) -> tuple[Any, dict[str, Any]]:
    """Load the pipeline with the requested sampler; check every spec against its U-Net."""
    device = req.device or _default_device()
    pipe, model_info = load_pipeline(req.model, img2img=req.init_image is not None, device=device, config=req.config)
    pipe.scheduler = make_scheduler(req.sampler, pipe.scheduler.config, seed=req.seed)
    names, aliases = _names(pipe)
    select_blocks(unet_blocks(pipe.unet), req.blocks, what="--blocks")
    plan_runs(req, names, aliases)  # layer-prompt block specs
    opts = req.attention_options()
    if opts is not None:
        select_layers(pipe.unet, unet_blocks(pipe.unet), opts)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe, model_info


def _size(req: RecordRequest, pipe: Any) -> tuple[int, int]:
    default = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return (req.height or default, req.width or default)


def estimate(req: RecordRequest, pipe: Any) -> Estimate:
    """Estimate the bytes of a recording from the block table, the attention plan and the sampler's calls."""
    h, w = _size(req, pipe)
    sf = int(pipe.vae_scale_factor)
    table = {b.name: b for b in block_table(pipe.unet, (h // sf, w // sf))}
    names, aliases = _names(pipe)
    selected = set(select_blocks(unet_blocks(pipe.unet), req.blocks))
    guidance = 2 if req.cfg > 1.0 else 1
    itemsize = np.dtype(schema.RECORD_DTYPES[req.dtype]).itemsize
    per_slab = itemsize * guidance * req.batch_size
    elems = sum(
        math.prod(b.output_shape) + (math.prod(b.input_shape) if req.inputs else 0) for n, b in table.items() if n in selected
    )
    sched = make_scheduler(req.sampler, pipe.scheduler.config, seed=req.seed)
    sched.set_timesteps(req.steps)
    calls_per_step = len(sched.timesteps) / req.steps
    n_steps = len(parse_ints(req.record_steps, 1, req.executed_steps)) if req.record_steps.strip() else req.executed_steps
    calls = max(1, round(n_steps * calls_per_step))
    attn_elems, self_elems, n_layers = 0.0, 0.0, 0
    opts = req.attention_options()
    if opts is not None:
        tokens = int(getattr(pipe.tokenizer, "model_max_length", 77))
        mods = dict(pipe.unet.named_modules())
        self_steps = (
            len(parse_ints(opts.self_steps, 1, req.executed_steps)) if opts.self_steps.strip() else req.executed_steps
        )
        for layer in select_layers(pipe.unet, unet_blocks(pipe.unet), opts):
            attn = mods[layer.module]
            hw = table[layer.block].input_shape[1:]
            heads, head_dim = int(attn.heads), int(attn.to_k.out_features) // int(attn.heads)
            if layer.cross:
                n = sum(math.prod(feature_shape(f, layer, heads, head_dim, hw[0] * hw[1], tokens, False)) for f in opts.features)
                attn_elems += n * calls
            else:
                ys, xs = query_grid(hw, opts.query_region, opts.query_stride)
                n = math.prod(feature_shape("qk", layer, heads, head_dim, len(ys) * len(xs), hw[0] * hw[1], opts.self_heads == "mean"))
                self_elems += n * calls * min(1.0, self_steps / max(1, n_steps))
            n_layers += 1
    runs = len(plan_runs(req, names, aliases)[0])
    return Estimate(
        runs=runs,
        calls=calls,
        blocks=len(selected),
        block_bytes=elems * per_slab * calls,
        attention_layers=n_layers,
        attention_bytes=int((attn_elems + self_elems) * per_slab),
        self_attention_bytes=int(self_elems * per_slab),
        shape_note=f"{w}x{h}, batch {req.batch_size}, {'cfg on' if guidance == 2 else 'cfg off'}, {req.dtype}",
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


def _tokens(pipe: Any, text: str) -> dict[str, Any]:
    tok = pipe.tokenizer
    ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    eos = tok.eos_token_id
    return {"ids": ids, "tokens": tok.convert_ids_to_tokens(ids), "length": ids.index(eos) + 1 if eos in ids else len(ids)}


def truncation_warning(pipe: Any, text: str) -> str | None:
    """Say which words the text encoder will drop from a prompt longer than its window."""
    tok = getattr(pipe, "tokenizer", None)
    if tok is None or not text:
        return None
    ids = tok(text, truncation=False).input_ids
    limit = tok.model_max_length
    if len(ids) <= limit:
        return None
    dropped = tok.decode(ids[limit - 1 : -1])
    return (
        f"warning: the prompt is {len(ids)} tokens and the text encoder reads {limit} (with start and end), "
        f"so the pipeline drops: {dropped!r}"
    )


def run(req: RecordRequest, pipe: Any, model_info: dict[str, Any]) -> dict[str, Any]:
    """Generate every planned run while recording into ``req.out``; return a summary for the CLI."""
    names, aliases = _names(pipe)
    plans, pairs = plan_runs(req, names, aliases)
    h, w = _size(req, pipe)
    base_kwargs: dict[str, Any] = dict(
        num_inference_steps=req.steps,
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
    from dumpunet.recorder.identity import software_versions, unet_fingerprint

    writer = StoreWriter(
        req.out,
        model={**model_info, "unet_fingerprint": unet_fingerprint(pipe.unet)},
        versions=software_versions(),
        pairs=[PairInfo(**p) for p in pairs],
        overwrite=req.overwrite,
    )
    calls = 0
    try:
        for plan in plans:
            calls += _record_one(req, pipe, writer, plan, base_kwargs)
    finally:
        writer.close()
    return {"out": str(req.out), "seed": req.seed, "steps": req.executed_steps, "calls": calls, "runs": [p.name for p in plans]}


def _record_one(req: RecordRequest, pipe: Any, writer: StoreWriter, plan: RunPlan, base_kwargs: dict[str, Any]) -> int:
    run_info: dict[str, Any] = {
        "prompt": plan.prompt,
        "negative_prompt": plan.negative,
        "seed": req.seed,
        "seeds": [req.seed + i for i in range(req.batch_size)],
        "sampler": req.sampler,
        "cfg": req.cfg,
        "requested_steps": req.steps,
        "init_image": str(req.init_image) if req.init_image else None,
        "strength": req.strength if req.init_image else None,
        **req.extra,
    }
    kwargs = dict(base_kwargs, generator=[torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.batch_size)])
    conditioning = None
    if plan.positive_blocks is not None or plan.negative_blocks is not None:
        names, _ = _names(pipe)
        positive = plan.positive_blocks or {b: plan.prompt for b in names}
        negative = plan.negative_blocks or ({b: plan.negative for b in names} if plan.negative else None)
        conditioning = BlockConditioning(pipe, positive, negative, num_images=req.batch_size, guidance_scale=req.cfg)
        kwargs.update(prompt=conditioning.pipeline_prompt, negative_prompt=conditioning.pipeline_negative)
        run_info["block_prompts"] = {"cond": positive, **({"uncond": negative} if negative else {})}
        distinct = set(positive.values()) | set((negative or {}).values())
        run_info["prompt_tokens"] = {text: _tokens(pipe, text) for text in sorted(distinct)}
    else:
        kwargs.update(prompt=plan.prompt, negative_prompt=plan.negative or None)
    rec = Recorder(
        pipe,
        writer=writer,
        run=plan.name,
        blocks=req.blocks,
        steps=req.record_steps,
        inputs=req.inputs,
        dtype=req.dtype,
        attention=req.attention_options(),
        run_info=run_info,
        progress=not req.quiet,
    )
    if conditioning is not None:
        with conditioning, rec:
            images = np.asarray(pipe(**kwargs).images)
            rec.set_images((images * 255).round().astype(np.uint8))
    else:
        with rec:
            images = np.asarray(pipe(**kwargs).images)
            rec.set_images((images * 255).round().astype(np.uint8))
    return rec.n_calls

"""One ``dumpunet record`` invocation: load, check, estimate, generate while recording."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dumpunet import store_schema as schema
from dumpunet.errors import RecordError
from dumpunet.recorder.blocks import block_table, unet_blocks
from dumpunet.recorder.models import load_pipeline
from dumpunet.recorder.samplers import make_scheduler
from dumpunet.recorder.session import Recorder
from dumpunet.specs import parse_blocks, parse_ints


@dataclass
class RecordRequest:
    """Everything ``dumpunet record`` takes, validated before any model is loaded."""

    out: Path
    model: str = "tiny-sd1"
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
    device: str | None = None
    init_image: Path | None = None
    config: Path | None = None
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
        # Spec syntax and ranges now, before any weights are loaded.
        self.executed_steps  # noqa: B018 - raises for a strength that leaves no step
        if self.record_steps.strip():
            parse_ints(self.record_steps, 1, self.executed_steps, noun="step", what="--record-steps")
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


@dataclass(frozen=True)
class Estimate:
    """Bytes a recording will write, before it starts."""

    calls: int
    blocks: int
    bytes_per_call: int
    total_bytes: int
    shape_note: str

    def lines(self) -> list[str]:
        return [
            f"size estimate: {schema.human_bytes(self.total_bytes)} raw "
            f"({self.blocks} blocks x {self.calls} U-Net calls, {schema.human_bytes(self.bytes_per_call)} per call; {self.shape_note})",
        ]


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare(req: RecordRequest) -> tuple[Any, dict[str, Any]]:
    """Load the pipeline with the requested sampler; check the block spec against its U-Net."""
    device = req.device or _default_device()
    pipe, model_info = load_pipeline(
        req.model, img2img=req.init_image is not None, device=device, config=req.config
    )
    pipe.scheduler = make_scheduler(req.sampler, pipe.scheduler.config, seed=req.seed)
    units = unet_blocks(pipe.unet)
    names = [u.name for u in units]
    parse_blocks(req.blocks, names, aliases={m: u.name for u in units for m in u.modules}, what="--blocks")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe, model_info


def _size(req: RecordRequest, pipe: Any) -> tuple[int, int]:
    default = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return (req.height or default, req.width or default)


def estimate(req: RecordRequest, pipe: Any) -> Estimate:
    """Estimate the bytes of a recording from the block table and the sampler's call count."""
    h, w = _size(req, pipe)
    sf = int(pipe.vae_scale_factor)
    table = block_table(pipe.unet, (h // sf, w // sf))
    units = unet_blocks(pipe.unet)
    selected = set(parse_blocks(req.blocks, [u.name for u in units], aliases={m: u.name for u in units for m in u.modules}))
    guidance = 2 if req.cfg > 1.0 else 1
    per_image = 0
    for b in table:
        if b.name in selected:
            per_image += math.prod(b.output_shape) + (math.prod(b.input_shape) if req.inputs else 0)
    itemsize = np.dtype(schema.RECORD_DTYPES[req.dtype]).itemsize
    per_call = per_image * itemsize * guidance * req.batch_size
    sched = make_scheduler(req.sampler, pipe.scheduler.config, seed=req.seed)
    sched.set_timesteps(req.steps)
    calls_per_step = len(sched.timesteps) / req.steps
    n_steps = len(parse_ints(req.record_steps, 1, req.executed_steps)) if req.record_steps.strip() else req.executed_steps
    calls = max(1, round(n_steps * calls_per_step))
    return Estimate(
        calls=calls,
        blocks=len(selected),
        bytes_per_call=per_call,
        total_bytes=per_call * calls,
        shape_note=f"{w}x{h}, batch {req.batch_size}, {'cfg on' if guidance == 2 else 'cfg off'}, {req.dtype}",
    )


def run(req: RecordRequest, pipe: Any, model_info: dict[str, Any]) -> dict[str, Any]:
    """Generate once while recording into ``req.out``; return a summary for the CLI."""
    h, w = _size(req, pipe)
    generators = [torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.batch_size)]
    kwargs: dict[str, Any] = dict(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt or None,
        num_inference_steps=req.steps,
        guidance_scale=req.cfg,
        num_images_per_prompt=req.batch_size,
        generator=generators,
        output_type="np",
    )
    if req.init_image is None:
        kwargs.update(height=h, width=w)
    else:
        from PIL import Image

        try:
            init = Image.open(req.init_image).convert("RGB").resize((w, h))
        except OSError as exc:
            raise RecordError(f"cannot read init image {req.init_image}: {exc}") from None
        kwargs.update(image=init, strength=req.strength)
    run_info = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "seed": req.seed,
        "seeds": [req.seed + i for i in range(req.batch_size)],
        "sampler": req.sampler,
        "cfg": req.cfg,
        "requested_steps": req.steps,
        "init_image": str(req.init_image) if req.init_image else None,
        "strength": req.strength if req.init_image else None,
        **req.extra,
    }
    rec = Recorder(
        pipe,
        req.out,
        blocks=req.blocks,
        steps=req.record_steps,
        inputs=req.inputs,
        dtype=req.dtype,
        overwrite=req.overwrite,
        run_info=run_info,
        model_info=model_info,
        progress=not req.quiet,
    )
    with rec:
        result = pipe(**kwargs)
        images = np.asarray(result.images)
        rec.set_images((images * 255).round().astype(np.uint8))
    return {"out": str(req.out), "seed": req.seed, "steps": req.executed_steps, "calls": rec.n_calls}


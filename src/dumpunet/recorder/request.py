"""What ``dumpunet record`` and ``dumpunet sweep`` are asked to do, as a value, and the runs it asks for.

A :class:`RecordRequest` checks its own values when it is made (no model, no disk, no random
draw); :func:`check` looks at the disk (the output folder, the init image); :func:`resolve_seed`
draws the seed of a request that asks for a random one, where the recording starts.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dumpunet.a1111_networks import LoraTag, check_outside_groups, extract_networks
from dumpunet.a1111_prompts import EMPHASIS_MODES
from dumpunet.errors import OptionError, RecordError
from dumpunet.prompts import parse_layer_prompt
from dumpunet.recorder.a1111_encode import A1111Options
from dumpunet.recorder.attention_layers import AttentionOptions
from dumpunet.recorder.checkpoints import PREDICTION_TYPES
from dumpunet.recorder.networks import parse_lora_option
from dumpunet.recorder.plan import RecordOptions
from dumpunet.recorder.samplers import resolve_sampler
from dumpunet.specs import parse_blocks, parse_ints
from dumpunet.store import schema
from dumpunet.store.target import StoreLock, check_target

__all__ = ["MAX_SEED", "RANGES", "RecordRequest", "RunPrompts", "check", "check_init_image", "draw_seed", "resolve_seed", "run_prompts", "swept_blocks"]

MAX_SEED = 2**64 - 1
"""The largest seed torch's generator takes (image i of a batch uses seed + i)."""

RANGES: dict[str, tuple[int | float, int | float]] = {
    "sampling_steps": (1, 10_000),
    "seed": (-1, MAX_SEED),
    "cfg": (0.0, 100.0),
    "width": (8, 8192),
    "height": (8, 8192),
    "batch_size": (1, 256),
    "strength": (0.0, 1.0),
    "clip_skip": (1, 48),
    "query_stride": (1, 64),
    "max_bytes": (0, 2**63 - 1),
}
"""Inclusive bounds of every numeric field of :class:`RecordRequest`, checked before anything is allocated.

Floats must also be finite. The bounds keep a mistyped value from allocating or computing
garbage: 10,000 steps, cfg 100 (A1111's slider stops at 30), 8192 pixels a side.
"""


@dataclass(frozen=True)
class RecordRequest:
    """Everything ``dumpunet record`` takes; its values are checked when it is made, before any model is loaded."""

    out: Path
    model: str = "tiny-sd1"
    config: Path | None = None
    prediction_type: str | None = None  # single files: epsilon | v_prediction (None: detected)
    prompt: str = ""
    negative_prompt: str = ""
    sampling_steps: int = 20
    steps: int | None = None  # deprecated spelling of sampling_steps (0.2; goes in 0.3)
    sampler: str = "Euler a"
    schedule: str = "Automatic"  # A1111's Schedule type (Karras, Exponential, ...) next to the sampler
    cfg: float = 7.0
    seed: int = -1  # -1: draw one when the recording starts (resolve_seed)
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    blocks: str = ""
    record_steps: str = ""
    inputs: bool = False
    dtype: str = "fp16"
    attention: str = "qk"
    attention_blocks: str = ""
    attention_heads: str = "all"
    attention_tokens: str = ""
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
    skip_no_xattn: bool = False  # sweep: leave out blocks without cross-attention (their runs equal the base)
    device: str | None = None
    init_image: Path | None = None
    strength: float = 0.6
    emphasis: str = "original"  # A1111's Emphasis mode
    clip_skip: int = 1  # A1111's Clip skip (1 = last layer)
    loras: tuple[str, ...] = ()  # --lora FILE[:WEIGHT]
    lora_dir: Path | None = None  # where <lora:NAME:WEIGHT> tags find NAME.safetensors (A1111's models/Lora)
    embeddings: tuple[Path, ...] = ()  # textual-inversion files, each the token of its file stem
    overwrite: bool = False
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps is not None:
            self._take_old_steps()
        self._check_ranges()
        if self.seed >= 0 and self.seed + self.batch_size - 1 > MAX_SEED:
            raise OptionError(f"--seed {self.seed} + --batch-size {self.batch_size} - 1 passes the largest seed {MAX_SEED}")
        if self.device is not None:
            from dumpunet.recorder.models import check_device

            check_device(self.device)
        resolve_sampler(self.sampler, self.schedule)
        if self.dtype not in schema.RECORD_DTYPES:
            raise OptionError(f"--dtype must be one of {', '.join(schema.RECORD_DTYPES)}, got {self.dtype!r}")
        if self.strength == 0.0:
            raise OptionError(f"--strength must be in (0, 1], got {self.strength}")
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise OptionError(f"--prediction-type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}")
        if self.emphasis not in EMPHASIS_MODES:
            raise OptionError(f"--emphasis must be one of {', '.join(EMPHASIS_MODES)}, got {self.emphasis!r}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and v % 8:
                raise OptionError(f"--{name} must be a positive multiple of 8, got {v}")
        if self.sweep_insert is not None and not self.sweep_insert.strip():
            raise OptionError("--insert is empty: every run would equal the base run; give the text to insert")
        if not self.self_attention:
            ignored = [flag for flag, given in (("--query-region", self.query_region is not None),
                                                ("--query-stride", self.query_stride != 1),
                                                ("--self-attention-blocks", bool(self.self_attention_blocks.strip())),
                                                ("--self-attention-steps", bool(self.self_attention_steps.strip())),
                                                ("--self-attention-heads", self.self_attention_heads != "all"))
                       if given]
            if ignored:
                verb = "filters" if len(ignored) == 1 else "filter"
                raise OptionError(f"{', '.join(ignored)} only {verb} self-attention maps; add --self-attention")
        features = AttentionOptions.parse_features(self.attention)
        if self.attention_heads != "all" and "qk" not in features:
            raise OptionError(f"--attention-heads {self.attention_heads} averages the cross-attention qk maps; "
                              f"--attention {self.attention!r} records none (add qk)")
        if self.attention_tokens.strip() and not {"qk", "k"} & set(features):
            raise OptionError(f"--attention-tokens keeps token columns of cross-attention qk and k; "
                              f"--attention {self.attention!r} records neither")
        # Everything that can be checked without weights is checked now.
        if self.record_steps.strip():
            parse_ints(self.record_steps, 1, self.executed_steps, noun="step", what="--record-steps")
        if self.self_attention_steps.strip():
            parse_ints(self.self_attention_steps, 1, self.executed_steps, noun="step", what="--self-attention-steps")
        self.attention_options()
        for name in ("loras", "embeddings"):
            if isinstance(getattr(self, name), (str, Path)):
                raise OptionError(f"{name} takes a list of files, got one {getattr(self, name)!r}")
        for text in self.loras:
            parse_lora_option(text)
        positive, negative = parse_layer_prompt(self.prompt), parse_layer_prompt(self.negative_prompt)
        for text, parsed in ((self.prompt, positive), (self.negative_prompt, negative)):
            check_outside_groups(text, [(g.start, g.end) for g in parsed.groups])
        self.network_tags()
        if self.pair and self.base is None and not (positive.has_groups or negative.has_groups):
            raise OptionError(
                "--pair needs a layer-prompt group like 'a (~: M00: excellent :~) girl' in --prompt or "
                "--negative-prompt, or --base TEXT to compare against"
            )

    @classmethod
    def from_infotext(cls, source: str | os.PathLike[str], **options: Any) -> RecordRequest:
        """The request for A1111 generation parameters (an image it saved, or the pasted text); ``options`` win.

        :func:`dumpunet.infotext.read_infotext` reads the same source and names the fields left unused.

        Examples
        --------
        >>> req = RecordRequest.from_infotext("a cat\\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, Seed: 7",
        ...                                   out=Path("cat.zarr"), sampling_steps=4)
        >>> req.prompt, req.sampling_steps, req.sampler, req.schedule, req.seed
        ('a cat', 4, 'DPM++ 2M', 'Karras', 7)
        """
        from dumpunet.infotext import read_infotext

        return cls(**{**read_infotext(source).request_fields(given=options), **options})

    def _take_old_steps(self) -> None:
        """Read the deprecated ``steps=N`` (the step count) as ``sampling_steps=N``, with a DeprecationWarning."""
        if self.sampling_steps != 20:
            raise OptionError(f"steps={self.steps!r} is the old name of sampling_steps; give sampling_steps only")
        warnings.warn("RecordRequest(steps=N) is deprecated: write sampling_steps=N (steps will choose the steps "
                      "to record, as record_steps does now)", DeprecationWarning, stacklevel=4)
        object.__setattr__(self, "sampling_steps", self.steps)
        object.__setattr__(self, "steps", None)

    def _check_ranges(self) -> None:
        """Refuse a numeric field that is not a number, not finite, or outside :data:`RANGES`."""
        for name, (lo, hi) in RANGES.items():
            v = getattr(self, name)
            if v is None and name in ("width", "height", "max_bytes"):
                continue
            flag = "--" + name.replace("_", "-")
            kind = float if isinstance(lo, float) else int
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
                noun = "a number" if kind is float else "a whole number"
                raise OptionError(f"{flag} must be {noun}, got {v!r}")
            if not math.isfinite(v) or not lo <= v <= hi:
                raise OptionError(f"{flag} must be between {lo} and {hi}, got {v}")

    @property
    def executed_steps(self) -> int:
        """Sampler steps that run: all of them, or the last ``strength`` share for img2img."""
        if self.init_image is None:
            return self.sampling_steps
        n = min(int(self.sampling_steps * self.strength), self.sampling_steps)
        if n < 1:
            raise OptionError(f"--strength {self.strength} with --sampling-steps {self.sampling_steps} leaves no step "
                              "to run")
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
                raise OptionError(f"--query-region takes x0,y0,x1,y1 as fractions of the image, got {self.query_region!r}")
        return AttentionOptions(
            features=features,
            blocks=self.attention_blocks,
            heads=self.attention_heads,
            tokens=self.attention_tokens,
            self_attention=self.self_attention,
            self_blocks=self.self_attention_blocks,
            self_steps=self.self_attention_steps,
            self_heads=self.self_attention_heads,
            query_region=region,  # type: ignore[arg-type]
            query_stride=self.query_stride,
        )

    def network_tags(self) -> tuple[LoraTag, ...]:
        """The ``<lora:NAME:WEIGHT>`` tags of the prompt, negative prompt and ``--base``, in that order."""
        texts = [self.prompt, self.negative_prompt, *([self.base] if self.base is not None else [])]
        return tuple(tag for text in texts for tag in extract_networks(text).loras)

    def without_networks(self) -> RecordRequest:
        """The request with every extra-network tag cut out of its prompts (the text the encoder reads)."""
        if not self.network_tags():
            return self
        return replace(self, prompt=extract_networks(self.prompt).text,
                       negative_prompt=extract_networks(self.negative_prompt).text,
                       base=extract_networks(self.base).text if self.base is not None else None)

    def a1111_options(self) -> A1111Options:
        """How prompts are read where A1111 syntax is used: emphasis mode and clip skip."""
        return A1111Options(emphasis=self.emphasis, clip_skip=self.clip_skip)

    def record_options(self) -> RecordOptions:
        """What every run of this request records."""
        return RecordOptions(blocks=self.blocks, steps=self.record_steps, inputs=self.inputs, dtype=self.dtype,
                             attention=self.attention_options())


def check(req: RecordRequest) -> None:
    """Check what the request needs from the disk: a free output path, a readable init image."""
    check_init_image(req)
    check_target(req.out, overwrite=req.overwrite)
    StoreLock(req.out).check_free()


def check_init_image(req: RecordRequest) -> None:
    if req.init_image is not None and not Path(req.init_image).is_file():
        raise RecordError(f"no init image at {req.init_image}")


def draw_seed() -> int:
    """A seed drawn now from the OS's randomness (what seed -1 becomes)."""
    return secrets.randbelow(2**32 - 1)


def resolve_seed(req: RecordRequest) -> RecordRequest:
    """The request with a concrete seed: its own, or (seed -1) one drawn now (:func:`draw_seed`)."""
    return req if req.seed >= 0 else replace(req, seed=draw_seed())


@dataclass(frozen=True)
class RunPrompts:
    """One run of a store (one generation): its name and the prompt every block gets."""

    name: str
    prompt: str
    negative: str
    positive_blocks: dict[str, str] | None = None  # None: one prompt for every block
    negative_blocks: dict[str, str] | None = None


def swept_blocks(req: RecordRequest, blocks: list[str], aliases: dict[str, str], no_xattn: frozenset[str] = frozenset()
                 ) -> tuple[list[str], list[str]]:
    """A sweep's target blocks (``--into-blocks``) and those of them without cross-attention.

    Text inserted into a block without cross-attention reaches nothing: its run is the base run,
    pixel for pixel. With ``--skip-no-xattn`` they are left out of the targets (and still listed).
    """
    swept = parse_blocks(req.sweep_blocks, blocks, aliases=aliases, what="--into-blocks")
    blind = [b for b in swept if b in no_xattn]
    if req.skip_no_xattn:
        swept = [b for b in swept if b not in no_xattn]
        if not swept:
            raise OptionError(f"--skip-no-xattn leaves no block: none of {', '.join(blind)} has cross-attention")
    return swept, blind


def run_prompts(req: RecordRequest, blocks: list[str], aliases: dict[str, str], no_xattn: frozenset[str] = frozenset()
                ) -> tuple[list[RunPrompts], list[schema.PairInfo]]:
    """Decide the runs (and pairs) a request records: one plain run, one layered run, a pair, or a sweep."""

    def layered(name: str, prompt: str, negative: str) -> RunPrompts:
        pos, neg = parse_layer_prompt(prompt), parse_layer_prompt(negative)
        if not (pos.has_groups or neg.has_groups):
            return RunPrompts(name, prompt, negative)
        return RunPrompts(
            name,
            prompt,
            negative,
            pos.resolve(blocks, aliases),
            neg.resolve(blocks, aliases) if negative else None,
        )

    if req.sweep_insert is not None:
        insert = req.sweep_insert.replace("\\", "\\\\").replace(";", "\\;").replace(":", "\\:")
        swept, _ = swept_blocks(req, blocks, aliases, no_xattn)
        runs = [layered(b, f"{req.prompt}, (~:{b}:{insert}:~)", req.negative_prompt) for b in swept]
        base = parse_layer_prompt(runs[0].prompt).base() if runs else req.prompt
        return [RunPrompts("base", base, req.negative_prompt), *runs], [schema.PairInfo("base", b, b) for b in swept]
    main = layered("layered" if req.pair else "main", req.prompt, req.negative_prompt)
    if not req.pair:
        return [main], []
    if req.base is not None:
        base_run = RunPrompts("base", req.base, req.negative_prompt)
    else:
        base_run = RunPrompts("base", parse_layer_prompt(req.prompt).base(), parse_layer_prompt(req.negative_prompt).base())
    return [base_run, main], [schema.PairInfo("base", "layered", "layered")]

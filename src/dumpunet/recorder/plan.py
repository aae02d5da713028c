"""What one recording writes, decided once before it starts: the :class:`RecordingPlan`.

The plan is computed from the U-Net, the latent size and the :class:`RecordOptions`: the block
table with shapes, the selected blocks, one :class:`LayerPlan` per attention layer (heads,
head size, query pixels, token count, per-feature shapes, the steps it is recorded at) and the
bytes a U-Net call writes. ``dumpunet record --dry-run`` estimates a recording from it
(:func:`dumpunet.recorder.job.estimate`), and the :class:`~dumpunet.recorder.recorder.Recorder`
creates its arrays and checks every captured tensor against it, so the two cannot drift.

Examples
--------
>>> from dumpunet.recorder.tiny import build_tiny_pipeline
>>> pipe = build_tiny_pipeline("tiny-sd1")
>>> opts = RecordOptions(blocks="M00", attention=AttentionOptions(blocks="M00"))
>>> plan = RecordingPlan.build(pipe.unet, opts, latent_hw=(16, 16), total_steps=3, n_images=1, n_guidance=2,
...                            n_tokens=77)
>>> plan.blocks, plan.block("M00").output_shape
(('M00',), (32, 2, 2))
>>> [(p.layer.name, p.shape("qk")) for p in plan.layers]
[('M00.attn2', (2, 4, 77))]
>>> plan.call_bytes(1)  # (32*2*2 + 2*4*77) values x 2 guidance halves x 2 bytes
2976
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from dumpunet.errors import OptionError
from dumpunet.layouts import BlockUnit
from dumpunet.recorder.attention_layers import AttentionLayer, AttentionOptions, kept_tokens, query_grid, select_layers
from dumpunet.recorder.blocks import block_table, select_blocks, unet_blocks
from dumpunet.specs import check_ints, format_ints, parse_ints
from dumpunet.store import schema

__all__ = ["LayerPlan", "RecordOptions", "RecordingPlan", "Selection", "token_length", "token_row"]


@dataclass(frozen=True)
class RecordOptions:
    """What to record: blocks, steps, block inputs, the stored dtype, attention.

    ``blocks``/``steps`` are specs (``"IN00-OUT11(+2)"``, ``"1-20(+5)"``; empty = all; blocks
    ``"none"`` = no block outputs); ``attention`` None records no attention maps.
    """

    blocks: str = ""
    steps: str = ""
    inputs: bool = False
    dtype: str = "fp16"
    attention: AttentionOptions | None = field(default_factory=AttentionOptions)

    def __post_init__(self) -> None:
        if self.dtype not in schema.RECORD_DTYPES:
            raise OptionError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(schema.RECORD_DTYPES)}")
        if self.steps.strip():  # syntax errors now; the range is checked once the step count is known
            check_ints(self.steps, 1, noun="step", what="step spec")

    @property
    def store_dtype(self) -> str:
        """The numpy name of the stored dtype (``"float16"``)."""
        return schema.RECORD_DTYPES[self.dtype]


@dataclass(frozen=True)
class Selection:
    """The blocks and attention layers some options select on one U-Net (no sizes needed yet)."""

    units: tuple[BlockUnit, ...]
    blocks: tuple[str, ...]
    layers: tuple[AttentionLayer, ...]
    options: RecordOptions

    @classmethod
    def of(cls, unet: nn.Module, options: RecordOptions, *, what: str = "block spec") -> Selection:
        """Check the block and attention specs against ``unet`` and select what they name."""
        units = tuple(unet_blocks(unet))
        blocks = tuple(select_blocks(list(units), options.blocks, what=what))
        att = options.attention
        layers = tuple(select_layers(unet, units, att)) if att is not None else ()
        return cls(units, blocks, layers, options)

    def features(self, layer: AttentionLayer) -> tuple[str, ...]:
        """Features recorded at ``layer``: the chosen ones at cross-attention, ``qk`` at self-attention."""
        assert self.options.attention is not None
        return self.options.attention.features if layer.cross else ("qk",)


@dataclass(frozen=True)
class LayerPlan:
    """One attention layer's recording: what it stores, at which query pixels and steps, in what shape."""

    layer: AttentionLayer
    features: tuple[str, ...]
    heads: int
    head_dim: int
    layer_hw: tuple[int, int]
    n_key: int  # tokens (cross-attention) or pixels (self-attention)
    steps: frozenset[int]  # steps whose calls store this layer
    query_rows: tuple[int, ...] | None = None  # self-attention with a region or stride: the kept rows
    query_cols: tuple[int, ...] | None = None
    head_mean: bool = False  # qk: the heads' mean (the head axis has length 1)
    token_index: tuple[int, ...] | None = None  # cross-attention qk, k: the kept token positions; None = all

    @property
    def n_token(self) -> int:
        """Entries of the stored token axis (qk, k)."""
        return self.n_key if self.token_index is None else len(self.token_index)

    @property
    def n_query(self) -> int:
        if self.query_rows is None or self.query_cols is None:
            return self.layer_hw[0] * self.layer_hw[1]
        return len(self.query_rows) * len(self.query_cols)

    @property
    def query_index(self) -> tuple[int, ...] | None:
        """Flat indices of the kept query pixels; None = all of them."""
        if self.query_rows is None or self.query_cols is None:
            return None
        w = self.layer_hw[1]
        return tuple(y * w + x for y in self.query_rows for x in self.query_cols)

    def shape(self, feature: str) -> tuple[int, ...]:
        """Per-call, per-(image, guidance) shape of one stored feature."""
        if feature == "qk":
            return (1 if self.head_mean else self.heads, self.n_query, self.n_token)
        if feature == "k":
            return (self.heads, self.n_token, self.head_dim)
        return (self.heads, self.n_query, self.head_dim)

    def attrs(self, feature: str = "qk") -> schema.LayerAttrs:
        """The attributes of the layer's ``feature`` array."""
        if self.layer.cross:
            return schema.LayerAttrs(layer_hw=self.layer_hw, module=self.layer.module, cross_attention=True,
                                     heads="mean" if self.head_mean and feature == "qk" else "all",
                                     kept_tokens=self.token_index if feature != "vqk" else None)
        h, w = self.layer_hw
        return schema.LayerAttrs(
            layer_hw=self.layer_hw, module=self.layer.module, cross_attention=False,
            query_rows=self.query_rows or tuple(range(h)), query_cols=self.query_cols or tuple(range(w)),
            heads="mean" if self.head_mean else "all", recorded_steps=format_ints(self.steps),
        )


def token_length(pipe: Any) -> int:
    """Tokens the text encoder hands the U-Net per prompt (its window, padded): the cross-attention key count."""
    return int(getattr(getattr(pipe, "tokenizer", None), "model_max_length", 77))


def token_row(tokenizer: Any, ids: Sequence[int]) -> schema.TokenRow:
    """What the text encoder read for one prompt: ids, their strings, the length up to the end token."""
    ids = [int(i) for i in ids]
    eos = getattr(tokenizer, "eos_token_id", None)
    length = ids.index(eos) + 1 if eos in ids else len(ids)
    return schema.TokenRow(tuple(ids), tuple(tokenizer.convert_ids_to_tokens(ids)), length)


def _steps(spec: str, total: int, what: str) -> frozenset[int]:
    return frozenset(parse_ints(spec, 1, total, noun="step", what=what)) if spec.strip() else frozenset(range(1, total + 1))


@dataclass(frozen=True)
class RecordingPlan:
    """Everything one run of a recording writes, per U-Net call: blocks, attention layers, shapes, bytes."""

    latent_hw: tuple[int, int]
    table: tuple[schema.BlockInfo, ...]  # every block, with shapes at this latent size
    blocks: tuple[str, ...]  # the recorded ones, in U-Net order
    layers: tuple[LayerPlan, ...]
    options: RecordOptions
    total_steps: int  # sampler steps that run
    record_steps: frozenset[int]
    n_images: int
    n_guidance: int

    @classmethod
    def build(
        cls,
        unet: nn.Module,
        options: RecordOptions,
        *,
        latent_hw: tuple[int, int],
        total_steps: int,
        n_images: int,
        n_guidance: int,
        n_tokens: int,
        selection: Selection | None = None,
    ) -> RecordingPlan:
        """Plan a run on ``unet`` at ``latent_hw`` with ``n_images`` x ``n_guidance`` batch rows and ``n_tokens`` keys."""
        sel = selection or Selection.of(unet, options)
        table = tuple(block_table(unet, latent_hw))
        by_name = {b.name: b for b in table}
        record_steps = _steps(options.steps, total_steps, "step spec")
        layers: list[LayerPlan] = []
        att = options.attention
        if sel.layers:
            assert att is not None
            mods = dict(unet.named_modules())
            self_steps = _steps(att.self_steps, total_steps, "self-attention step spec") & record_steps
            kept = kept_tokens(att.tokens, n_tokens)
            for layer in sel.layers:
                attn = mods[layer.module]
                heads = int(attn.heads)
                hw = by_name[layer.block].input_shape[1:]
                common = dict(layer=layer, features=sel.features(layer), heads=heads,
                              head_dim=int(attn.to_k.out_features) // heads, layer_hw=(hw[0], hw[1]))
                if layer.cross:
                    layers.append(LayerPlan(**common, n_key=n_tokens, steps=record_steps,  # type: ignore[arg-type]
                                            head_mean=att.heads == "mean", token_index=kept))
                    continue
                ys, xs = query_grid((hw[0], hw[1]), att.query_region, att.query_stride)
                full = len(ys) * len(xs) == hw[0] * hw[1]
                layers.append(LayerPlan(  # type: ignore[arg-type]
                    **common, n_key=hw[0] * hw[1], steps=self_steps, head_mean=att.self_heads == "mean",
                    query_rows=None if full else tuple(ys), query_cols=None if full else tuple(xs),
                ))
        return cls(latent_hw=latent_hw, table=table, blocks=sel.blocks, layers=tuple(layers), options=options,
                   total_steps=total_steps, record_steps=record_steps, n_images=n_images, n_guidance=n_guidance)

    def block(self, name: str) -> schema.BlockInfo:
        return next(b for b in self.table if b.name == name)

    @property
    def which(self) -> tuple[str, ...]:
        """The per-block arrays: ``("output",)``, or ``("output", "input")`` with inputs."""
        return ("output", "input") if self.options.inputs else ("output",)

    def expected_shapes(self, step: int) -> dict[tuple[str, str], tuple[int, ...]]:
        """(block or layer, array) -> per-(image, guidance) shape of every tensor a call at ``step`` stores."""
        if step not in self.record_steps:
            return {}
        out: dict[tuple[str, str], tuple[int, ...]] = {}
        for name in self.blocks:
            info = self.block(name)
            out[(name, "output")] = info.output_shape
            if self.options.inputs:
                out[(name, "input")] = info.input_shape
        for lp in self.layers:
            if step in lp.steps:
                out.update({(lp.layer.name, f): lp.shape(f) for f in lp.features})
        return out

    @property
    def _row_bytes(self) -> int:
        return np.dtype(self.options.store_dtype).itemsize * self.n_images * self.n_guidance

    def call_bytes(self, step: int) -> int:
        """Bytes one U-Net call at ``step`` stores."""
        return sum(math.prod(s) for s in self.expected_shapes(step).values()) * self._row_bytes

    def block_call_bytes(self) -> int:
        """Bytes of block arrays one recorded U-Net call stores."""
        per = sum(math.prod(self.block(b).output_shape) + (math.prod(self.block(b).input_shape) if self.options.inputs else 0)
                  for b in self.blocks)
        return per * self._row_bytes

    def layer_bytes(self, calls: int, *, cross: bool) -> int:
        """Bytes the cross- (or self-) attention layers store over ``calls`` recorded U-Net calls."""
        share = {lp.layer.name: len(lp.steps) / max(1, len(self.record_steps)) for lp in self.layers}
        return int(sum(
            sum(math.prod(lp.shape(f)) for f in lp.features) * calls * share[lp.layer.name]
            for lp in self.layers if lp.layer.cross == cross
        ) * self._row_bytes)


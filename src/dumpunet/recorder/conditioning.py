"""Per-block prompts: give each block's cross-attention layers the embedding of its own prompt.

Each distinct effective prompt (see :mod:`dumpunet.prompts`) is encoded once with the pipeline's
own ``encode_prompt``; a processor wrapper on every cross-attention layer of a block then hands
the layer that block's embedding instead of the pipeline's. Nothing else changes, so a layer
prompt that gives every block the plain prompt's text reproduces the plain image bit for bit.

What the pipeline itself is given (and, for SDXL, where the pooled text embedding and the
added time conditioning come from) is the *majority* prompt: the effective prompt shared by most
blocks with cross-attention (ties: the earliest such block). See docs/layer-prompts.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from dumpunet.errors import RecordError
from dumpunet.recorder.attention_layers import attention_layers
from dumpunet.recorder.blocks import unet_blocks
from dumpunet.recorder.processors import ProcessorWrapper, wrap_processors


def majority_prompt(prompts: Mapping[str, str], blocks: list[str]) -> str:
    """The prompt most of ``blocks`` get (ties: the earliest block's)."""
    counts = Counter(prompts[b] for b in blocks)
    best = max(counts.values())
    return next(prompts[b] for b in blocks if counts[prompts[b]] == best)


class _SwapContext(ProcessorWrapper):
    def __init__(self, inner: Any, context: torch.Tensor, block: str) -> None:
        super().__init__(inner)
        self.context = context
        self.block = block

    def run(self, attn: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        given = kwargs.get("encoder_hidden_states", args[0] if args else None)
        if given is not None and given.shape[0] != self.context.shape[0]:
            raise RecordError(
                f"{self.block}: the U-Net batch ({given.shape[0]}) does not match the per-block prompt batch "
                f"({self.context.shape[0]}); pass the same batch size and guidance to the pipeline"
            )
        if args:
            args = (self.context, *args[1:])
        else:
            kwargs["encoder_hidden_states"] = self.context
        return self.inner(attn, hidden_states, *args, **kwargs)


class BlockConditioning:
    """Encode per-block prompts and install them on the U-Net's cross-attention layers.

    Parameters
    ----------
    pipe
        A Stable Diffusion (XL) pipeline.
    positive, negative
        Block name -> effective prompt (negative may be None: the pipeline's default).
    num_images, guidance_scale
        What the pipeline will be called with (they fix the embedding batch).
    encode
        ``(prompt, negative) -> (positive, negative)`` embeddings of batch 1, in place of the
        pipeline's ``encode_prompt`` (e.g. A1111's conditioning:
        :func:`dumpunet.recorder.a1111_encode.prompt_pair_encoder`).

    Use as a context manager around the pipeline call, and call the pipeline with
    ``prompt=cond.pipeline_prompt, negative_prompt=cond.pipeline_negative``.
    """

    def __init__(
        self,
        pipe: Any,
        positive: Mapping[str, str],
        negative: Mapping[str, str] | None,
        *,
        num_images: int = 1,
        guidance_scale: float = 7.0,
        encode: Callable[[str, str], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.pipe = pipe
        self.encode = encode
        units = unet_blocks(pipe.unet)
        self.cross_layers = [layer for layer in attention_layers(pipe.unet, units) if layer.cross]
        cross_blocks = [u.name for u in units if u.cross_attention]
        self.positive = dict(positive)
        self.negative = dict(negative) if negative is not None else None
        self.pipeline_prompt = majority_prompt(self.positive, cross_blocks)
        self.pipeline_negative = majority_prompt(self.negative, cross_blocks) if self.negative is not None else None
        self.do_cfg = guidance_scale > 1.0 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None
        self.num_images = num_images
        self._restore: Any = None
        self.contexts = self._encode(cross_blocks)

    def _encode(self, blocks: list[str]) -> dict[str, torch.Tensor]:
        device = getattr(self.pipe, "_execution_device", None) or self.pipe.device
        cache: dict[tuple[str, str | None], torch.Tensor] = {}
        out = {}
        with torch.no_grad():
            for b in blocks:
                key = (self.positive[b], self.negative[b] if self.negative is not None else None)
                if key not in cache and self.encode is not None:
                    pos, neg = (x.repeat(self.num_images, 1, 1) for x in self.encode(key[0], key[1] or ""))
                    cache[key] = torch.cat([neg, pos]) if self.do_cfg else pos
                if key not in cache:
                    res = self.pipe.encode_prompt(
                        prompt=key[0],
                        device=device,
                        num_images_per_prompt=self.num_images,
                        do_classifier_free_guidance=self.do_cfg,
                        negative_prompt=key[1],
                    )
                    pos, neg = res[0], res[1]
                    cache[key] = torch.cat([neg, pos]) if self.do_cfg else pos
                out[b] = cache[key]
        self.n_encoded = len(cache)
        return out

    def __enter__(self) -> BlockConditioning:
        self._restore = wrap_processors(
            self.pipe.unet,
            {
                layer.module: (lambda inner, ctx=self.contexts[layer.block], b=layer.block: _SwapContext(inner, ctx, b))
                for layer in self.cross_layers
            },
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

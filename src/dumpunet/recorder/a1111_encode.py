"""Encode prompts the way AUTOMATIC1111 does: weighted pieces, 75-token chunks, clip skip.

Behaviour re-derived from the web UI (``modules/sd_hijack_clip.py``, ``sd_emphasis.py``):

- The prompt's pieces (:func:`dumpunet.a1111_prompts.parse_emphasis`) are laid out in 77-token
  chunks by :mod:`dumpunet.a1111_chunks` (75 tokens, A1111's comma rule, ``BREAK``). Each chunk
  is encoded on its own and the chunks are concatenated along the token axis: a prompt of ``n``
  chunks gives ``77 n`` tokens.
- Emphasis "original": the chunk's hidden states are multiplied by their tokens' weights, then
  scaled so that their mean (over everything encoded in one call, as A1111 batches the texts of
  one prompt's schedule) is what it was. "no-norm" skips the rescale, "ignore" the weights, and
  "none" does not parse the prompt at all.
- SDXL: both encoders read the same chunks, each with its own emphasis; their hidden states are
  concatenated per token, and the pooled embedding is the second encoder's, from the first chunk,
  before emphasis. An empty negative prompt is all zeros, as in A1111 and diffusers.
- Positive and negative conditioning get the same number of chunks by appending chunks of the
  empty prompt (A1111's "Pad prompt/negative prompt" option; diffusers needs equal shapes to
  batch classifier-free guidance, where A1111 by default runs the two halves separately).

Clip skip ``N`` (A1111's "Clip skip", 1 = last layer): for SD1/SD2 the hidden states of the
``N``-th layer from the end, through the final layer norm -- diffusers' ``clip_skip = N - 1``
(``N = 1``: diffusers' default, ``clip_skip=None``). SD2 checkpoints in diffusers already lack the
last layer, so ``N = 1`` is A1111's SD2 default. SDXL always reads the penultimate layers
without the final norm: A1111 ignores clip skip there, and so does this module (with a note).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dumpunet.a1111_chunks import CHUNK, Chunk, split_chunks, tokenize_chunks
from dumpunet.a1111_prompts import EMPHASIS_MODES, Piece, parse_emphasis

__all__ = ["A1111Options", "Conditioning", "encode_texts", "pipeline_embeds", "prompt_pair_encoder"]


@dataclass(frozen=True)
class A1111Options:
    """How to read and encode prompts: A1111's Emphasis mode and Clip skip."""

    emphasis: str = "original"
    clip_skip: int = 1

    def __post_init__(self) -> None:
        if self.emphasis not in EMPHASIS_MODES:
            raise ValueError(f"unknown emphasis {self.emphasis!r}; choose one of {', '.join(EMPHASIS_MODES)}")
        if not isinstance(self.clip_skip, int) or self.clip_skip < 1:
            raise ValueError(f"clip skip must be an integer of at least 1 (1 = last layer), got {self.clip_skip!r}")


def _empty_chunk(bos: int, eos: int, pad: int) -> Chunk:
    return split_chunks([Piece("", 1.0)], [[]], bos=bos, eos=eos, pad=pad, comma=None)[0]


@dataclass
class _Encoder:
    """One text encoder with its tokenizer, and how its hidden states are read."""

    tokenizer: Any
    model: Any
    sdxl: bool
    clip_skip: int

    def ids(self) -> tuple[int, int, int]:
        tok = self.tokenizer
        return tok.bos_token_id, tok.eos_token_id, tok.pad_token_id

    def chunks(self, pieces: Sequence[Piece]) -> list[Chunk]:
        return tokenize_chunks(self.tokenizer, pieces)

    def hidden(self, ids: tuple[int, ...], device: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode one 77-token chunk as diffusers' ``encode_prompt`` does (same calls, same numerics)."""
        x = torch.tensor([ids], dtype=torch.long, device=device)
        if self.sdxl:
            out = self.model(x, output_hidden_states=True)
            return out.hidden_states[-2], out[0] if out[0].ndim == 2 else None
        if self.clip_skip == 1:
            return self.model(x, attention_mask=None)[0], None
        out = self.model(x, attention_mask=None, output_hidden_states=True)
        # transformers 5 dropped the `text_model` level of CLIPTextModel
        norm = getattr(self.model, "text_model", self.model).final_layer_norm
        return norm(out.hidden_states[-self.clip_skip]), None


def _encoders(pipe: Any, options: A1111Options) -> list[_Encoder]:
    second = getattr(pipe, "text_encoder_2", None)
    if second is None:
        return [_Encoder(pipe.tokenizer, pipe.text_encoder, False, options.clip_skip)]
    pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, second)]
    return [_Encoder(tok, model, True, options.clip_skip) for tok, model in pairs if model is not None]


def _emphasize(zs: list[torch.Tensor], weights: list[tuple[float, ...]], counts: list[int], mode: str) -> list[torch.Tensor]:
    """Apply the weights of one chunk position across a batch of texts (``counts``: how often each occurs)."""
    if mode in ("ignore", "none") or all(w == 1.0 for row in weights for w in row):
        return zs
    mults = [torch.tensor(row, dtype=z.dtype, device=z.device).reshape(1, -1, 1) for z, row in zip(zs, weights)]
    weighted = [z * m for z, m in zip(zs, mults)]
    if mode == "no-norm":
        return weighted
    total = sum(counts)
    before = sum(z.float().mean() * c for z, c in zip(zs, counts)) / total
    after = sum(z.float().mean() * c for z, c in zip(weighted, counts)) / total
    return [z * (before / after).to(z.dtype) for z in weighted]


@dataclass
class Conditioning:
    """The A1111 conditioning of a batch of texts: per text, embeddings ``(1, 77 n, C)`` and pooled."""

    texts: list[str]
    embeds: list[torch.Tensor]
    pooled: list[torch.Tensor | None]
    chunks: list[list[Chunk]]  # per text, the first encoder's chunks (for token labels)
    pieces: list[tuple[Piece, ...]]
    notes: list[str] = field(default_factory=list)

    @property
    def n_chunks(self) -> int:
        return self.embeds[0].shape[1] // (CHUNK + 2)


def encode_texts(
    pipe: Any,
    texts: Sequence[str],
    options: A1111Options = A1111Options(),
    *,
    counts: Sequence[int] | None = None,
    negative: bool = False,
    min_chunks: int = 1,
) -> Conditioning:
    """Encode ``texts`` together, as A1111 encodes the texts of one prompt's schedule.

    ``counts`` says how many steps use each text (the emphasis mean weighs them so, as A1111's
    batch holds one text per schedule entry); ``negative=True`` makes an empty SDXL prompt zeros;
    ``min_chunks`` pads every text with empty-prompt chunks up to that count.

    Examples
    --------
    >>> from dumpunet.recorder.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline("tiny-sd1")
    >>> cond = encode_texts(pipe, ["a (cute:1.2) girl BREAK pink hair"])
    >>> cond.embeds[0].shape, cond.n_chunks
    (torch.Size([1, 154, 32]), 2)
    """
    texts = list(texts)
    counts = list(counts) if counts is not None else [1] * len(texts)
    encoders = _encoders(pipe, options)
    notes: list[str] = []
    if encoders[0].sdxl and options.clip_skip != 1:
        notes.append(f"clip skip {options.clip_skip} is ignored for SDXL (as in A1111): the penultimate layers are used")
    parsed = [parse_emphasis(t, mode=options.emphasis) for t in texts]
    for p in parsed:
        notes.extend(n for n in p.notes if n not in notes)
    per_encoder = [[enc.chunks(p.pieces) for p in parsed] for enc in encoders]
    n = max(min_chunks, *(len(c) for chunks in per_encoder for c in chunks))
    device = getattr(pipe, "_execution_device", None) or pipe.device
    zero = [negative and encoders[0].sdxl and t == "" for t in texts]

    parts: list[list[torch.Tensor]] = [[] for _ in texts]  # per text, per encoder, (1, 77 n, C)
    pooled: list[torch.Tensor | None] = [None] * len(texts)
    with torch.no_grad():
        for enc, chunks in zip(encoders, per_encoder):
            empty = _empty_chunk(*enc.ids())
            rows: list[list[torch.Tensor]] = [[] for _ in texts]
            for position in range(n):
                batch = [c[position] if position < len(c) else empty for c in chunks]
                encoded = [enc.hidden(chunk.ids, device) for chunk in batch]
                if position == 0 and enc is encoders[-1] and enc.sdxl:
                    pooled = [p for _, p in encoded]
                zs = _emphasize([z for z, _ in encoded], [c.weights for c in batch], counts, options.emphasis)
                for row, z in zip(rows, zs):
                    row.append(z)
            for part, row in zip(parts, rows):
                part.append(torch.cat(row, dim=1))
    embeds = [torch.cat(p, dim=-1) for p in parts]
    dtype = encoders[-1].model.dtype
    embeds = [torch.zeros_like(e) if z else e.to(dtype=dtype, device=device) for e, z in zip(embeds, zero)]
    pooled = [torch.zeros_like(p) if z and p is not None else p for p, z in zip(pooled, zero)]
    return Conditioning(texts, embeds, pooled, per_encoder[0], [p.pieces for p in parsed], notes)


def pipeline_embeds(
    pipe: Any, prompt: str, negative: str = "", options: A1111Options = A1111Options()
) -> tuple[dict[str, torch.Tensor], Conditioning, Conditioning]:
    """Return the pipeline keyword arguments that carry A1111's conditioning of one prompt pair.

    The positive and negative get the same number of chunks; for SDXL the pooled embeddings
    come along. Pass the dict to the pipeline instead of ``prompt``/``negative_prompt``.

    Examples
    --------
    >>> from dumpunet.recorder.tiny import build_tiny_pipeline
    >>> kwargs, pos, neg = pipeline_embeds(build_tiny_pipeline("tiny-sdxl"), "a (cute:1.2) girl")
    >>> sorted(kwargs), kwargs["negative_prompt_embeds"].abs().max().item()
    (['negative_pooled_prompt_embeds', 'negative_prompt_embeds', 'pooled_prompt_embeds', 'prompt_embeds'], 0.0)
    """
    pos = encode_texts(pipe, [prompt], options)
    neg = encode_texts(pipe, [negative], options, negative=True)
    if pos.n_chunks < neg.n_chunks:
        pos = encode_texts(pipe, [prompt], options, min_chunks=neg.n_chunks)
    elif neg.n_chunks < pos.n_chunks:
        neg = encode_texts(pipe, [negative], options, negative=True, min_chunks=pos.n_chunks)
    kwargs = {"prompt_embeds": pos.embeds[0], "negative_prompt_embeds": neg.embeds[0]}
    if pos.pooled[0] is not None:
        kwargs["pooled_prompt_embeds"] = pos.pooled[0]
        kwargs["negative_pooled_prompt_embeds"] = neg.pooled[0]
    return kwargs, pos, neg


def prompt_pair_encoder(pipe: Any, options: A1111Options = A1111Options()) -> Any:
    """Return ``(prompt, negative) -> (positive, negative)`` A1111 embeddings, for per-block prompts.

    Each block's effective prompt is encoded A1111's way; blocks may get different chunk counts
    (cross-attention takes any number of tokens), positive and negative of one block match.
    """

    def encode(prompt: str, negative: str) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs, _, _ = pipeline_embeds(pipe, prompt, negative, options)
        return kwargs["prompt_embeds"], kwargs["negative_prompt_embeds"]

    return encode

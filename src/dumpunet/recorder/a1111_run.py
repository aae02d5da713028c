"""When a recording reads its prompts A1111's way, and what the pipeline and the store then get.

A run takes A1111's conditioning (:class:`~dumpunet.recorder.a1111_schedule.ScheduledConditioning`)
when its prompt or negative prompt uses A1111 syntax (emphasis brackets, ``BREAK``, prompt
editing or alternation), is longer than one 75-token chunk, or when clip skip is not 1. Any
other run keeps the pipeline's own prompt encoding, unchanged.
"""

from __future__ import annotations

from typing import Any

from dumpunet.a1111_chunks import Chunk, token_labels, tokenize_chunks
from dumpunet.a1111_prompts import Piece, parse_emphasis, prompt_schedule
from dumpunet.recorder.a1111_encode import A1111Options
from dumpunet.recorder.a1111_schedule import ScheduledConditioning
from dumpunet.store import schema

__all__ = ["a1111_conditioning", "uses_a1111"]


def uses_a1111(pipe: Any, text: str, options: A1111Options, steps: int) -> bool:
    """Whether ``text`` needs A1111's encoding: syntax the pipeline would read literally, more than one chunk, or clip skip."""
    if options.clip_skip != 1 or prompt_schedule(text, steps).entries != ((steps, text),):
        return True
    parsed = parse_emphasis(text, mode=options.emphasis)
    if parsed.pieces != (Piece(text, 1.0),):
        return True
    return len(tokenize_chunks(pipe.tokenizer, parsed.pieces)) > 1


def _row(tokenizer: Any, chunks: list[Chunk], n_chunks: int) -> schema.TokenRow:
    """The ``77 n`` tokens of ``chunks`` padded with empty chunks (as encoded); ``length`` runs to the end token after the last prompt token."""
    empty = tokenize_chunks(tokenizer, [Piece("", 1.0)])
    labels = token_labels(tokenizer, [*chunks, *empty * (n_chunks - len(chunks))])
    real = [k for k, label in enumerate(labels) if label["piece"] >= 0]
    length = real[-1] + 2 if real else 2
    return schema.TokenRow(tuple(int(x["id"]) for x in labels), tuple(x["token"] for x in labels), length)


def a1111_conditioning(
    pipe: Any, prompt: str, negative: str, options: A1111Options, *, steps: int, guidance: bool
) -> tuple[dict[str, Any], dict[str, tuple[schema.TokenRow, ...]]]:
    """Pipeline keyword arguments carrying A1111's conditioning, and the token rows the U-Net sees at the first step."""
    cond = ScheduledConditioning(pipe, prompt, negative, steps=steps, options=options)
    pos, neg = cond.chunks_at(0)
    uncond_label, cond_label = schema.GUIDANCE_LABELS
    n = cond.positive.n_chunks
    tokens = {cond_label: (_row(pipe.tokenizer, pos, n),)}
    if guidance:
        tokens[uncond_label] = (_row(pipe.tokenizer, neg, n),)
    return cond.pipeline_kwargs(), tokens

"""Prompt editing and alternation during sampling: the conditioning changes at A1111's steps.

Every text of the positive and of the negative prompt's schedule
(:func:`dumpunet.a1111_prompts.prompt_schedule`) is encoded once, the way A1111 encodes them (one
batch per prompt: one emphasis rescale, one chunk count), and the positive and negative get the
same number of chunks. The pipeline starts with the step-0 texts; diffusers'
``callback_on_step_end`` (a public pipeline hook) hands it the next step's embeddings -- and for
SDXL the next pooled embeddings -- after every step. A prompt without editing gives exactly
:func:`~dumpunet.recorder.a1111_encode.pipeline_embeds`'s conditioning and installs no callback.

Steps are the pipeline's denoising-loop steps, A1111's 0-based sampler steps. (A1111 counts
denoiser calls, which differ from steps only for its second-order samplers.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from dumpunet.a1111_prompts import Schedule, prompt_schedule
from dumpunet.recorder.a1111_encode import A1111Options, Conditioning, encode_texts

__all__ = ["ScheduledConditioning"]


def _encode(pipe: Any, schedule: Schedule, options: A1111Options, *, negative: bool, min_chunks: int = 1) -> Conditioning:
    counts = Counter(text for _, text in schedule.entries)  # A1111's batch: one text per schedule entry
    texts = list(schedule.texts)
    return encode_texts(pipe, texts, options, counts=[counts[t] for t in texts], negative=negative, min_chunks=min_chunks)


class ScheduledConditioning:
    """A1111 conditioning of a prompt pair over ``steps`` sampling steps.

    Call the pipeline with ``**cond.pipeline_kwargs()`` (and the same ``num_inference_steps``)
    instead of ``prompt``/``negative_prompt``. :meth:`texts_at` says which texts the U-Net sees
    at a step.

    Examples
    --------
    >>> from dumpunet.recorder.tiny import build_tiny_pipeline
    >>> cond = ScheduledConditioning(build_tiny_pipeline("tiny-sd1"), "a [cute:ugly:1] girl", "", steps=3)
    >>> [cond.texts_at(i)[0] for i in range(3)]
    ['a cute girl', 'a cute girl', 'a ugly girl']
    >>> sorted(cond.pipeline_kwargs())[:2]
    ['callback_on_step_end', 'callback_on_step_end_tensor_inputs']
    """

    def __init__(self, pipe: Any, prompt: str, negative: str = "", *, steps: int, options: A1111Options = A1111Options()):
        self.pipe = pipe
        self.steps = steps
        self.positive_schedule = prompt_schedule(prompt, steps)
        self.negative_schedule = prompt_schedule(negative, steps)
        pos = _encode(pipe, self.positive_schedule, options, negative=False)
        neg = _encode(pipe, self.negative_schedule, options, negative=True)
        if pos.n_chunks < neg.n_chunks:
            pos = _encode(pipe, self.positive_schedule, options, negative=False, min_chunks=neg.n_chunks)
        elif neg.n_chunks < pos.n_chunks:
            neg = _encode(pipe, self.negative_schedule, options, negative=True, min_chunks=pos.n_chunks)
        self.positive, self.negative = pos, neg
        self.notes = [*self.positive_schedule.notes, *pos.notes]
        self.notes += [f"negative prompt: {n}" for n in (*self.negative_schedule.notes, *neg.notes)]

    @property
    def edited(self) -> bool:
        """Whether the conditioning changes during sampling."""
        return len(self.positive.texts) > 1 or len(self.negative.texts) > 1

    def texts_at(self, step: int) -> tuple[str, str]:
        """The positive and negative text the U-Net sees at 0-based step ``step``."""
        return self.positive_schedule.text_at(step), self.negative_schedule.text_at(step)

    def chunks_at(self, step: int) -> tuple[Any, Any]:
        """The positive and negative chunks (token layout) at ``step``."""
        pos, neg = self.texts_at(step)
        return self.positive.chunks[self.positive.texts.index(pos)], self.negative.chunks[self.negative.texts.index(neg)]

    def _at(self, cond: Conditioning, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        i = cond.texts.index(text)
        return cond.embeds[i], cond.pooled[i]

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the pipeline: step-0 embeddings and, if edited, the step callback."""
        pos, pos_pooled = self._at(self.positive, self.texts_at(0)[0])
        neg, neg_pooled = self._at(self.negative, self.texts_at(0)[1])
        kwargs: dict[str, Any] = {"prompt_embeds": pos, "negative_prompt_embeds": neg}
        if pos_pooled is not None:
            kwargs["pooled_prompt_embeds"] = pos_pooled
            kwargs["negative_pooled_prompt_embeds"] = neg_pooled
        if self.edited:
            inputs = ["prompt_embeds", "add_text_embeds"] if pos_pooled is not None else ["prompt_embeds"]
            kwargs["callback_on_step_end"] = self._next_step
            kwargs["callback_on_step_end_tensor_inputs"] = inputs
        return kwargs

    def _next_step(self, pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        """Hand the pipeline the conditioning of step ``i + 1`` (same batch layout as it holds)."""
        if i + 1 >= self.steps:
            return {}
        pos_text, neg_text = self.texts_at(i + 1)
        pos, pos_pooled = self._at(self.positive, pos_text)
        neg, neg_pooled = self._at(self.negative, neg_text)
        held = tensors["prompt_embeds"]
        cfg = bool(getattr(pipe, "do_classifier_free_guidance", False))
        images = held.shape[0] // (2 if cfg else 1)

        def batch(p: torch.Tensor, n: torch.Tensor | None) -> torch.Tensor:
            p = p.to(held.device).repeat(images, *[1] * (p.ndim - 1))
            if not cfg or n is None:
                return p
            return torch.cat([n.to(held.device).repeat(images, *[1] * (n.ndim - 1)), p])

        out = {"prompt_embeds": batch(pos, neg).to(held.dtype)}
        if "add_text_embeds" in tensors and pos_pooled is not None:
            out["add_text_embeds"] = batch(pos_pooled, neg_pooled).to(tensors["add_text_embeds"].dtype)
        return out

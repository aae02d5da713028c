"""Which sampler step a U-Net call belongs to, for every diffusers scheduler."""

from __future__ import annotations

from typing import Any


def starts_new_step(scheduler: Any, call_index: int) -> bool:
    """Tell whether the U-Net call about to run begins a new sampler step.

    Second-order samplers (Heun, DPM2, DPM++ SDE) evaluate the U-Net twice per step and say so
    through ``state_in_first_order``; PLMS evaluates its first step twice (``counter == 1`` is
    the second evaluation). Every other sampler makes one call per step.
    """
    if call_index == 0:
        return True
    first = getattr(scheduler, "state_in_first_order", None)
    if first is not None:
        return bool(first)
    if type(scheduler).__name__ == "PNDMScheduler" and getattr(scheduler.config, "skip_prk_steps", False):
        return getattr(scheduler, "counter", 0) != 1
    return True


def executed_steps(scheduler: Any) -> int:
    """Number of sampler steps the pipeline will run (img2img skips the first ones)."""
    n = int(scheduler.num_inference_steps)
    begin = getattr(scheduler, "begin_index", None) or 0
    return n - begin // max(1, int(getattr(scheduler, "order", 1)))

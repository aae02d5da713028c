"""Which sampler step a U-Net call belongs to, for every diffusers scheduler."""

from __future__ import annotations

from collections.abc import Callable
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


class StepClock:
    """Step, substep and timestep of the U-Net call under way, and how many calls have ended.

    >>> from types import SimpleNamespace
    >>> heun = SimpleNamespace(state_in_first_order=True)
    >>> clock = StepClock()
    >>> for t, first in ((999.0, True), (999.0, False), (500.0, True)):
    ...     heun.state_in_first_order = first
    ...     clock.start_call(heun, t)
    ...     clock.end_call()
    ...     print(clock.step, clock.substep, clock.timestep)
    1 0 999.0
    1 1 999.0
    2 0 500.0
    """

    def __init__(self) -> None:
        self.calls = 0  # U-Net calls that ended
        self.step = 0  # sampler step of the call under way, from 1
        self.substep = 0  # second-order samplers: 1 for the second call of a step
        self.timestep: float | Callable[[], float] = 0.0

    def start_call(self, scheduler: Any, timestep: float | Callable[[], float]) -> None:
        """Advance to the call about to run (a GPU timestep comes as a callable the store writer resolves)."""
        if starts_new_step(scheduler, self.calls):
            self.step += 1
            self.substep = 0
        else:
            self.substep += 1
        self.timestep = timestep

    def end_call(self) -> None:
        self.calls += 1

"""Map A1111 sampler names to diffusers schedulers.

The table follows diffusers' "A1111/k-diffusion <-> Diffusers" mapping in its scheduler
overview, with two deliberate differences:

- ``DPM++ SDE`` (and ``Karras``) use :class:`~diffusers.DPMSolverSDEScheduler`, diffusers' port
  of k-diffusion's ``sample_dpmpp_sde`` that A1111 runs, rather than the table's
  ``DPMSolverSinglestepScheduler``. It needs the ``torchsde`` package for its Brownian tree,
  which ``make_scheduler(..., seed=)`` seeds as A1111 does with the image seed.
  (``LMS`` needs ``scipy``; :func:`make_scheduler` says which package to install.)
- ``UniPC`` uses A1111's default settings (variant ``bh1``, order 3), not diffusers' defaults,
  and ends at the smallest trained sigma as UniPC's reference sampler does.

Every option that tells two samplers apart is set explicitly (``use_karras_sigmas=False`` for
the plain ones), so a model whose own scheduler config turns Karras sigmas on does not leak
them into ``Euler``.

Examples
--------
>>> SAMPLERS["DPM++ 2M Karras"].scheduler
'DPMSolverMultistepScheduler'
>>> dict(SAMPLERS["DPM++ 2M Karras"].options)
{'algorithm_type': 'dpmsolver++', 'solver_order': 2, 'use_karras_sigmas': True}
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dumpunet.errors import OptionError

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

__all__ = ["SAMPLERS", "SamplerSpec", "make_scheduler", "sampler_table_markdown"]


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler: the diffusers scheduler class that implements it and its options.

    ``options`` are passed to ``Scheduler.from_config(base_config, **options)``;
    ``requires`` names the importable packages the scheduler needs beyond diffusers;
    ``seed_option`` names the option that seeds noise the pipeline's generator does not drive.
    """

    name: str
    scheduler: str
    options: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    seed_option: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


_PLAIN = {"use_karras_sigmas": False}
_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

_SPECS = (
    SamplerSpec("Euler", "EulerDiscreteScheduler", _PLAIN),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler"),
    SamplerSpec("LMS", "LMSDiscreteScheduler", _PLAIN, requires=("scipy",)),
    SamplerSpec("LMS Karras", "LMSDiscreteScheduler", _KARRAS, requires=("scipy",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", _PLAIN),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", _PLAIN),
    SamplerSpec("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", _PLAIN),
    SamplerSpec("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS),
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", {**_DPMPP_2M, **_PLAIN}),
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M, **_KARRAS}),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {**_DPMPP_2M_SDE, **_PLAIN}),
    SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", {**_DPMPP_2M_SDE, **_KARRAS}),
    # Its Brownian tree draws from its own seed, not from the pipeline's generator.
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", _PLAIN, ("torchsde",), "noise_sampler_seed"),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS, ("torchsde",), "noise_sampler_seed"),
    SamplerSpec("DDIM", "DDIMScheduler"),
    SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    # A1111's defaults (options uni_pc_variant="bh1", uni_pc_order=3, lower_order_final). The
    # UniPC reference sampler stops at t=1/N, not at sigma 0; with a zero final sigma diffusers'
    # bh1 update divides by an infinite log-SNR step and returns NaN.
    SamplerSpec(
        "UniPC",
        "UniPCMultistepScheduler",
        {"solver_type": "bh1", "solver_order": 3, "lower_order_final": True, "final_sigmas_type": "sigma_min"},
    ),
)

SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in _SPECS}
"""A1111 sampler name -> :class:`SamplerSpec`, grouped by family."""

_BY_KEY = {" ".join(name.lower().split()): spec for name, spec in SAMPLERS.items()}


def _lookup(name: str) -> SamplerSpec:
    spec = _BY_KEY.get(" ".join(name.lower().split()))
    if spec is None:
        raise OptionError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return spec


def make_scheduler(name: str, base_config: Mapping[str, Any], *, seed: int | None = None) -> SchedulerMixin:
    """Build the scheduler for the A1111 sampler ``name`` from a model's scheduler config.

    ``name`` matches case-insensitively and ignores repeated spaces. ``base_config`` is
    usually ``pipe.scheduler.config``; it supplies the model's betas and timestep settings.
    ``seed`` seeds the noise of samplers that do not draw from the pipeline's generator
    (``DPM++ SDE``: A1111 seeds its Brownian tree with the image seed); without it their
    runs are not reproducible. Other samplers ignore it.

    Examples
    --------
    >>> from dumpunet.recorder.tiny import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline("tiny-sd1")
    >>> pipe.scheduler = make_scheduler("dpm++ 2m karras", pipe.scheduler.config)
    >>> type(pipe.scheduler).__name__, pipe.scheduler.config.use_karras_sigmas
    ('DPMSolverMultistepScheduler', True)
    """
    spec = _lookup(name)
    missing = [pkg for pkg in spec.requires if importlib.util.find_spec(pkg) is None]
    if missing:
        raise OptionError(
            f"sampler {spec.name!r} needs the {', '.join(missing)} package: pip install {' '.join(missing)}"
        )
    import diffusers

    cls = getattr(diffusers, spec.scheduler)
    options = dict(spec.options)
    if seed is not None and spec.seed_option is not None:
        options[spec.seed_option] = seed
    try:
        return cls.from_config(dict(base_config), **options)
    except ImportError as exc:  # diffusers' placeholder class for a missing optional backend
        raise OptionError(f"sampler {spec.name!r} cannot be built: {' '.join(str(exc).split())}") from exc


def _literal(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def sampler_table_markdown() -> str:
    """Return the sampler table as Markdown: A1111 name, diffusers class, options.

    Examples
    --------
    >>> print(sampler_table_markdown().splitlines()[2])
    | Euler | `EulerDiscreteScheduler` | `use_karras_sigmas=False` |
    """
    rows = ["| Sampler | diffusers class | options |", "|---|---|---|"]
    for spec in SAMPLERS.values():
        opts = ", ".join(f"`{k}={_literal(v)}`" for k, v in spec.options.items())
        if spec.requires:
            opts = ", ".join(filter(None, [opts, f"needs `pip install {' '.join(spec.requires)}`"]))
        rows.append(f"| {spec.name} | `{spec.scheduler}` | {opts} |")
    return "\n".join(rows)

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

- ``DPM++ 2S a``, ``DPM fast``, ``DPM adaptive``, ``Restart`` have no diffusers scheduler
  (diffusers' single-step DPM-Solver adds no ancestral noise): they are refused, by name.

A1111's "Schedule type" (1.9 and later; older versions put it in the name, ``DPM++ 2M Karras``)
is :data:`SCHEDULES`: Karras, Exponential and Beta sigmas are the diffusers flags
``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas``, taken where the
scheduler class has them. Every schedule flag the class has is set explicitly (``False``
for the plain samplers), so a model whose own scheduler config turns Karras sigmas on does not
leak them into ``Euler``.

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

__all__ = [
    "NO_DIFFUSERS", "NO_DIFFUSERS_SCHEDULES", "SAMPLERS", "SCHEDULES", "Sampler", "SamplerSpec", "make_scheduler",
    "resolve_sampler", "sampler_table_markdown",
]


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
_DPMPP_3M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
# A1111's UniPC defaults (options uni_pc_variant="bh1", uni_pc_order=3, lower_order_final). The
# UniPC reference sampler stops at t=1/N, not at sigma 0; with a zero final sigma diffusers'
# bh1 update divides by an infinite log-SNR step and returns NaN.
_UNIPC = {"solver_order": 3, "lower_order_final": True, "final_sigmas_type": "sigma_min"}

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
    SamplerSpec("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", {**_DPMPP_2M_SDE, "solver_type": "heun", **_PLAIN}),
    SamplerSpec("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {**_DPMPP_3M_SDE, **_PLAIN}),
    SamplerSpec("DPM++ 3M SDE Karras", "DPMSolverMultistepScheduler", {**_DPMPP_3M_SDE, **_KARRAS}),
    # Its Brownian tree draws from its own seed, not from the pipeline's generator.
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", _PLAIN, ("torchsde",), "noise_sampler_seed"),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS, ("torchsde",), "noise_sampler_seed"),
    SamplerSpec("DDIM", "DDIMScheduler"),
    SamplerSpec("DDPM", "DDPMScheduler"),
    SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {"solver_type": "bh1", **_UNIPC}),
    # A1111's UniPC with its variant option set to bh2 (ComfyUI's uni_pc_bh2)
    SamplerSpec("UniPC bh2", "UniPCMultistepScheduler", {"solver_type": "bh2", **_UNIPC}),
    SamplerSpec("LCM", "LCMScheduler"),
)

SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in _SPECS}
"""A1111 sampler name -> :class:`SamplerSpec`, grouped by family."""

NO_DIFFUSERS: tuple[str, ...] = ("DPM++ 2S a", "DPM fast", "DPM adaptive", "Restart", "DDIM CFG++")
"""A1111 sampler names that diffusers has no scheduler for (``DPM++ 2S a``: diffusers' single-step
DPM-Solver adds no ancestral noise), refused with a message that says so."""

SCHEDULES: dict[str, Mapping[str, bool]] = {
    "Automatic": {},
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
}
"""A1111 "Schedule type" -> the diffusers scheduler flag that gives it.

``Automatic`` keeps what the sampler name says; ``Uniform`` (the model's own sigmas) turns every
schedule flag off. Every schedule flag the scheduler class has and the schedule does not turn
on is set to ``False``, so a model config cannot leak its own choice into the run.
"""

NO_DIFFUSERS_SCHEDULES: tuple[str, ...] = (
    "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps", "Align Your Steps GITS", "Align Your Steps 11",
    "Align Your Steps 32", "Simple", "Normal", "DDIM", "Turbo",
)
"""A1111 schedule types with no diffusers scheduler flag, refused with a message that says so."""

_SCHEDULE_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


_BY_KEY = {_key(name): spec for name, spec in SAMPLERS.items()}
_NO_DIFFUSERS_KEYS = {_key(n): n for n in NO_DIFFUSERS}
_SCHEDULE_KEYS = {_key(n): n for n in (*SCHEDULES, *NO_DIFFUSERS_SCHEDULES)}


def _named_schedule(spec: SamplerSpec) -> str | None:
    """The schedule a table row's name carries (``DPM++ 2M Karras``), if any."""
    for label, flags in SCHEDULES.items():
        if flags and all(spec.options.get(k) == v for k, v in flags.items()):
            return label
    return None


def _no_scheduler(name: str) -> OptionError:
    return OptionError(f"sampler {name!r} has no diffusers scheduler, so dumpunet cannot run it; "
                       f"choose one of: {', '.join(SAMPLERS)}")


def _split(name: str) -> tuple[SamplerSpec, str | None]:
    """The table row a sampler name names, and the schedule its name carries."""
    key = _key(name)
    if key in _BY_KEY:
        return _BY_KEY[key], _named_schedule(_BY_KEY[key])
    if key in _NO_DIFFUSERS_KEYS:
        raise _no_scheduler(_NO_DIFFUSERS_KEYS[key])
    for skey, label in sorted(_SCHEDULE_KEYS.items(), key=lambda kv: -len(kv[0])):
        base = key.removesuffix(" " + skey)
        if base != key and base in _NO_DIFFUSERS_KEYS:
            raise _no_scheduler(_NO_DIFFUSERS_KEYS[base])
        if base != key and base in _BY_KEY and _named_schedule(_BY_KEY[base]) is None:
            return _BY_KEY[base], label
    raise OptionError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def _schedule_label(schedule: str) -> str:
    label = _SCHEDULE_KEYS.get(_key(schedule))
    if label is None:
        raise OptionError(f"unknown schedule type {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if label in NO_DIFFUSERS_SCHEDULES:
        raise OptionError(f"schedule type {label!r} has no diffusers equivalent; choose one of: {', '.join(SCHEDULES)}")
    return label


def _scheduler_flags(scheduler: str) -> tuple[str, ...]:
    """The schedule flags the diffusers class ``scheduler`` takes."""
    import inspect

    import diffusers

    params = inspect.signature(getattr(diffusers, scheduler).__init__).parameters
    return tuple(flag for flag in _SCHEDULE_FLAGS if flag in params)


@dataclass(frozen=True)
class Sampler:
    """A sampler name and schedule type resolved: the table row and the options the scheduler gets.

    ``name`` is the name A1111 would show: the row's name, or the row's name and the schedule
    (``DPM++ 2M Exponential``, A1111's older spelling of sampler and schedule in one name).
    """

    name: str
    spec: SamplerSpec
    schedule: str
    options: Mapping[str, Any]
    requires: tuple[str, ...]


def resolve_sampler(name: str, schedule: str = "Automatic") -> Sampler:
    """Resolve an A1111 sampler name and "Schedule type" to the scheduler options, or refuse them.

    Names match case-insensitively; a schedule may be given in the name (``DPM++ 3M SDE
    Exponential``, A1111's older names) or apart (``schedule="exponential"``, A1111 1.9's
    "Schedule type"), not both differently. Refused with a one-line :class:`OptionError`:
    an unknown name, a sampler or schedule diffusers has no scheduler for, and a schedule the
    sampler's diffusers class takes no flag for.

    Examples
    --------
    >>> s = resolve_sampler("DPM++ 2M", "Karras")
    >>> s.name, dict(s.options)["use_karras_sigmas"]
    ('DPM++ 2M Karras', True)
    >>> resolve_sampler("dpm++ 3m sde exponential").name
    'DPM++ 3M SDE Exponential'
    """
    spec, named = _split(name)
    if named is not None:
        _schedule_label(named)  # refuses one with no diffusers flag
    given = _schedule_label(schedule)
    if named is not None and given not in ("Automatic", named):
        raise OptionError(f"sampler {spec.name!r} names the {named} schedule, but the schedule type asks for {given}; "
                          f"give the sampler without it ({_base_name(spec, named)!r})")
    label = named or given
    options = dict(spec.options)
    flags = _scheduler_flags(spec.scheduler)
    wanted = SCHEDULES[label]
    missing = [f for f in wanted if f not in flags]
    if missing:
        raise OptionError(f"sampler {spec.name!r} takes no {label} schedule: diffusers' {spec.scheduler} has no "
                          f"{missing[0]} option")
    for flag in flags:  # every flag explicit: a model config's own choice must not leak in
        if label == "Automatic":
            options.setdefault(flag, False)
        else:
            options[flag] = wanted.get(flag, False)
    requires = spec.requires + (("scipy",) if label == "Beta" and "scipy" not in spec.requires else ())
    if label in ("Automatic", "Uniform") or _named_schedule(spec) is not None:  # the row's name says it all
        shown = spec.name
    else:
        shown = f"{spec.name} {label}"
        shown = next((s.name for s in SAMPLERS.values() if _key(s.name) == _key(shown)), shown)
    return Sampler(shown, spec, label, MappingProxyType(options), requires)


def _base_name(spec: SamplerSpec, named: str) -> str:
    return spec.name.removesuffix(" " + named)


def make_scheduler(
    name: str, base_config: Mapping[str, Any], *, seed: int | None = None, schedule: str = "Automatic"
) -> SchedulerMixin:
    """Build the scheduler for the A1111 sampler ``name`` from a model's scheduler config.

    ``name`` matches case-insensitively and ignores repeated spaces; ``schedule`` is A1111's
    "Schedule type" (see :func:`resolve_sampler`). ``base_config`` is
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
    sampler = resolve_sampler(name, schedule)
    spec = sampler.spec
    missing = [pkg for pkg in sampler.requires if importlib.util.find_spec(pkg) is None]
    if missing:
        raise OptionError(
            f"sampler {sampler.name!r} needs the {', '.join(missing)} package: pip install {' '.join(missing)}"
        )
    import diffusers

    cls = getattr(diffusers, spec.scheduler)
    options = dict(sampler.options)
    if seed is not None and spec.seed_option is not None:
        options[spec.seed_option] = seed
    try:
        return cls.from_config(dict(base_config), **options)
    except ImportError as exc:  # diffusers' placeholder class for a missing optional backend
        raise OptionError(f"sampler {sampler.name!r} cannot be built: {' '.join(str(exc).split())}") from exc


def _literal(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _schedules_of(spec: SamplerSpec) -> list[str]:
    """The schedule types a table row takes: the one its name carries, or every one its class has a flag for."""
    named = _named_schedule(spec)
    if named is not None:
        return [named]
    flags = _scheduler_flags(spec.scheduler)
    return [label for label, wanted in SCHEDULES.items() if all(f in flags for f in wanted)]


def sampler_table_markdown() -> str:
    """Return the sampler table as Markdown: A1111 name, diffusers class, options, schedule types it takes.

    Examples
    --------
    >>> print(sampler_table_markdown().splitlines()[2])
    | Euler | `EulerDiscreteScheduler` | `use_karras_sigmas=False` | Automatic, Uniform, Karras, Exponential, Beta |
    """
    rows = ["| Sampler | diffusers class | options | schedule types |", "|---|---|---|---|"]
    for spec in SAMPLERS.values():
        opts = ", ".join(f"`{k}={_literal(v)}`" for k, v in spec.options.items())
        if spec.requires:
            opts = ", ".join(filter(None, [opts, f"needs `pip install {' '.join(spec.requires)}`"]))
        rows.append(f"| {spec.name} | `{spec.scheduler}` | {opts} | {', '.join(_schedules_of(spec))} |")
    return "\n".join(rows)

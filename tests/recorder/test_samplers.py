"""A1111 sampler names -> diffusers schedulers, run on tiny-sd1."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dumpunet.errors import ModelError, OptionError  # noqa: E402
from dumpunet.recorder.samplers import (  # noqa: E402
    NO_DIFFUSERS,
    SAMPLERS,
    SCHEDULES,
    make_scheduler,
    resolve_sampler,
    sampler_table_markdown,
)
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.recorder

LISTED = (
    "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "PLMS", "LMS", "Heun", "UniPC",
    "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM2", "DPM2 Karras", "DPM2 a", "LMS Karras", "DPM++ SDE",
    "DPM++ 3M SDE", "DPM++ 3M SDE Karras", "DPM++ 2M SDE Heun", "LCM", "DDPM", "UniPC bh2",
)


def installed(spec) -> bool:
    return all(importlib.util.find_spec(pkg) is not None for pkg in spec.requires)


@pytest.fixture(scope="module")
def pipe():
    p = build_tiny_pipeline("tiny-sd1")
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe, sampler: str, seed: int = 0, steps: int = 3) -> np.ndarray:
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    return pipe("a cute girl", num_inference_steps=steps, generator=gen, output_type="np").images[0]


def test_every_requested_sampler_is_known():
    assert set(LISTED) <= set(SAMPLERS)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_builds_its_scheduler_and_runs(pipe, name):
    spec = SAMPLERS[name]
    if not installed(spec):
        with pytest.raises(OptionError) as err:
            make_scheduler(name, pipe.scheduler.config)
        missing = " ".join(p for p in spec.requires if importlib.util.find_spec(p) is None)
        assert str(err.value) == f"sampler {name!r} needs the {missing.replace(' ', ', ')} package: pip install {missing}"
        return
    first = run(pipe, name)
    assert type(pipe.scheduler).__name__ == spec.scheduler
    assert {k: pipe.scheduler.config[k] for k in spec.options} == dict(spec.options)
    assert np.isfinite(first).all()
    assert np.array_equal(first, run(pipe, name))  # stochastic samplers draw from the seed
    if spec.seed_option is not None:  # same generator, another noise seed: another picture
        assert pipe.scheduler.config[spec.seed_option] == 0
        pipe.scheduler = make_scheduler(name, pipe.scheduler.config, seed=1)
        gen = torch.Generator().manual_seed(0)
        other = pipe("a cute girl", num_inference_steps=3, generator=gen, output_type="np").images[0]
        assert not np.array_equal(first, other)


def test_samplers_give_different_pictures(pipe):
    runnable = [n for n, s in SAMPLERS.items() if installed(s)]
    # 5 steps: with fewer, DPM++ 3M SDE never takes a third-order step and equals DPM++ 2M SDE Heun
    images = {n: run(pipe, n, steps=5).tobytes() for n in runnable}
    assert len(set(images.values())) == len(runnable)


def test_names_match_case_and_space_insensitively(pipe):
    sched = make_scheduler("  dpm++   2m KARRAS ", pipe.scheduler.config)
    assert type(sched).__name__ == "DPMSolverMultistepScheduler"
    assert (sched.config.use_karras_sigmas, sched.config.algorithm_type) == (True, "dpmsolver++")


def test_model_settings_do_not_leak_into_plain_samplers(pipe):
    karras_model = {**pipe.scheduler.config, "use_karras_sigmas": True, "beta_end": 0.02}
    sched = make_scheduler("Euler", karras_model)
    assert (sched.config.use_karras_sigmas, sched.config.beta_end) == (False, 0.02)


def test_unknown_sampler_lists_the_known_names(pipe):
    with pytest.raises(OptionError) as err:
        make_scheduler("Euler b", pipe.scheduler.config)
    assert not isinstance(err.value, ModelError) and isinstance(err.value, ValueError)
    assert str(err.value) == (
        "unknown sampler 'Euler b'; choose one of: Euler, Euler a, LMS, LMS Karras, Heun, DPM2, DPM2 Karras, "
        "DPM2 a, DPM2 a Karras, DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, DPM++ 2M SDE Karras, DPM++ 2M SDE Heun, "
        "DPM++ 3M SDE, DPM++ 3M SDE Karras, DPM++ SDE, DPM++ SDE Karras, DDIM, DDPM, PLMS, UniPC, UniPC bh2, LCM"
    )


def test_docs_table_is_the_one_the_code_makes():
    """docs/samplers.md shows exactly the table the sampler registry generates."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "samplers.md").read_text().splitlines()
    start = doc.index(next(line for line in doc if line.startswith("| Sampler |")))
    end = next((i for i in range(start, len(doc)) if not doc[i].startswith("|")), len(doc))
    table = doc[start:end]
    assert table == sampler_table_markdown().splitlines()


def test_markdown_table_has_one_row_per_sampler():
    lines = sampler_table_markdown().splitlines()
    assert lines[:2] == ["| Sampler | diffusers class | options | schedule types |", "|---|---|---|---|"]
    assert len(lines) == 2 + len(SAMPLERS)
    assert lines[2 + list(SAMPLERS).index("DPM++ 2M Karras")] == (
        '| DPM++ 2M Karras | `DPMSolverMultistepScheduler` | `algorithm_type="dpmsolver++"`, `solver_order=2`, '
        "`use_karras_sigmas=True` | Karras |"
    )
    assert lines[2 + list(SAMPLERS).index("DPM++ 3M SDE")].endswith(" | Automatic, Uniform, Karras, Exponential, Beta |")
    assert lines[2 + list(SAMPLERS).index("Euler a")].endswith(" | Automatic, Uniform |")
    assert lines[2 + list(SAMPLERS).index("DPM++ SDE Karras")] == (
        "| DPM++ SDE Karras | `DPMSolverSDEScheduler` | `use_karras_sigmas=True`, needs `pip install torchsde` | Karras |"
    )


FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@pytest.mark.parametrize(
    ("name", "schedule", "shown", "scheduler", "options", "on"),
    [
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler",
         {"algorithm_type": "dpmsolver++", "solver_order": 2}, "use_karras_sigmas"),
        ("DPM++ 2M Karras", "karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler",
         {"algorithm_type": "dpmsolver++", "solver_order": 2}, "use_karras_sigmas"),
        ("DPM++ 3M SDE", "Exponential", "DPM++ 3M SDE Exponential", "DPMSolverMultistepScheduler",
         {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "use_exponential_sigmas"),
        ("dpm++ 3m sde exponential", "Automatic", "DPM++ 3M SDE Exponential", "DPMSolverMultistepScheduler",
         {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "use_exponential_sigmas"),
        ("DPM++ 3M SDE Karras", "Automatic", "DPM++ 3M SDE Karras", "DPMSolverMultistepScheduler",
         {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "use_karras_sigmas"),
        ("DPM++ 2M SDE Heun", "exponential", "DPM++ 2M SDE Heun Exponential", "DPMSolverMultistepScheduler",
         {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, "use_exponential_sigmas"),
        ("Euler", "Beta", "Euler Beta", "EulerDiscreteScheduler", {}, "use_beta_sigmas"),
        ("UniPC", "Karras", "UniPC Karras", "UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3},
         "use_karras_sigmas"),
        ("UniPC bh2", "Automatic", "UniPC bh2", "UniPCMultistepScheduler", {"solver_type": "bh2"}, None),
        ("Heun", "Uniform", "Heun", "HeunDiscreteScheduler", {}, None),
        ("DPM++ SDE", "Exponential", "DPM++ SDE Exponential", "DPMSolverSDEScheduler", {}, "use_exponential_sigmas"),
        ("LCM", "Automatic", "LCM", "LCMScheduler", {}, None),
        ("DDPM", "uniform", "DDPM", "DDPMScheduler", {}, None),
    ],
)
def test_sampler_and_schedule_build_the_scheduler_with_its_flags(pipe, name, schedule, shown, scheduler, options, on):
    sampler = resolve_sampler(name, schedule)
    assert sampler.name == shown
    if not all(importlib.util.find_spec(p) for p in sampler.requires):
        pytest.skip(f"needs {sampler.requires}")
    # a model config with its own schedule flags on: only the asked-for one may stay on
    leaky = {**pipe.scheduler.config, "use_exponential_sigmas": on is None}
    sched = make_scheduler(name, leaky, schedule=schedule, seed=0)
    assert type(sched).__name__ == scheduler
    assert {k: sched.config[k] for k in options} == options
    takes = inspect.signature(type(sched).__init__).parameters  # a flag the class lacks is ignored by it
    flags = {k: sched.config[k] for k in FLAGS if k in takes}
    assert flags == {k: k == on for k in flags}
    if on is not None:
        assert flags[on] is True


@pytest.mark.parametrize(
    ("name", "schedule", "message"),
    [
        ("Restart", "Automatic", "sampler 'Restart' has no diffusers scheduler, so dumpunet cannot run it; choose one of: "),
        ("dpm++ 2s a", "Automatic", "sampler 'DPM++ 2S a' has no diffusers scheduler, so dumpunet cannot run it; "),
        ("DPM++ 2S a Karras", "Automatic", "sampler 'DPM++ 2S a' has no diffusers scheduler, so dumpunet cannot run it; "),
        ("DPM adaptive", "Karras", "sampler 'DPM adaptive' has no diffusers scheduler, so dumpunet cannot run it; "),
        ("Euler a", "Karras", "sampler 'Euler a' takes no Karras schedule: diffusers' EulerAncestralDiscreteScheduler "
                              "has no use_karras_sigmas option"),
        ("LCM", "Exponential", "sampler 'LCM' takes no Exponential schedule: diffusers' LCMScheduler has no "
                               "use_exponential_sigmas option"),
        ("DPM++ 2M Karras", "Exponential", "sampler 'DPM++ 2M Karras' names the Karras schedule, but the schedule type "
                                           "asks for Exponential; give the sampler without it ('DPM++ 2M')"),
        ("DPM++ 2M", "Polyexponential", "schedule type 'Polyexponential' has no diffusers equivalent; choose one of: "
                                        "Automatic, Uniform, Karras, Exponential, Beta"),
        ("Euler SGM Uniform", "Automatic", "schedule type 'SGM Uniform' has no diffusers equivalent; "),
        ("Euler", "sigmoid", "unknown schedule type 'sigmoid'; choose one of: Automatic, Uniform, Karras, Exponential, Beta"),
    ],
)
def test_samplers_and_schedules_diffusers_lacks_are_refused(name, schedule, message):
    with pytest.raises(OptionError) as err:
        resolve_sampler(name, schedule)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_refused_names_are_not_in_the_table():
    assert not set(NO_DIFFUSERS) & set(SAMPLERS)
    assert set(SCHEDULES) == {"Automatic", "Uniform", "Karras", "Exponential", "Beta"}

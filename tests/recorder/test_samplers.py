"""A1111 sampler names -> diffusers schedulers, run on tiny-sd1."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dumpunet.errors import ModelError, OptionError  # noqa: E402
from dumpunet.recorder.samplers import SAMPLERS, make_scheduler, sampler_table_markdown  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.recorder

LISTED = (
    "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "PLMS", "LMS", "Heun", "UniPC",
    "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM2", "DPM2 Karras", "DPM2 a", "LMS Karras", "DPM++ SDE",
)


def installed(spec) -> bool:
    return all(importlib.util.find_spec(pkg) is not None for pkg in spec.requires)


@pytest.fixture(scope="module")
def pipe():
    p = build_tiny_pipeline("tiny-sd1")
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe, sampler: str, seed: int = 0) -> np.ndarray:
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    return pipe("a cute girl", num_inference_steps=3, generator=gen, output_type="np").images[0]


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
    images = {n: run(pipe, n).tobytes() for n in runnable}
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
        "DPM2 a, DPM2 a Karras, DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, DPM++ 2M SDE Karras, DPM++ SDE, "
        "DPM++ SDE Karras, DDIM, PLMS, UniPC"
    )


def test_docs_table_is_the_one_the_code_makes():
    """docs/samplers.md shows exactly the table the sampler registry generates."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "samplers.md").read_text().splitlines()
    table = [line for line in doc if line.startswith("|")]
    assert table == sampler_table_markdown().splitlines()


def test_markdown_table_has_one_row_per_sampler():
    lines = sampler_table_markdown().splitlines()
    assert lines[:2] == ["| Sampler | diffusers class | options |", "|---|---|---|"]
    assert len(lines) == 2 + len(SAMPLERS)
    assert lines[2 + list(SAMPLERS).index("DPM++ 2M Karras")] == (
        '| DPM++ 2M Karras | `DPMSolverMultistepScheduler` | `algorithm_type="dpmsolver++"`, `solver_order=2`, '
        "`use_karras_sigmas=True` |"
    )
    assert lines[2 + list(SAMPLERS).index("DPM++ SDE Karras")] == (
        "| DPM++ SDE Karras | `DPMSolverSDEScheduler` | `use_karras_sigmas=True`, needs `pip install torchsde` |"
    )

"""``dumpunet record --infotext`` and ``--schedule`` on the embedded tiny model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402

import dumpunet  # noqa: E402
from dumpunet.cli import main  # noqa: E402
from dumpunet.recorder.request import RecordRequest  # noqa: E402

pytestmark = pytest.mark.recorder

INFOTEXT = """a cute girl, pink hair
Negative prompt: lowres,
bad anatomy
Steps: 3, Sampler: DPM++ 3M SDE, Schedule type: Exponential, CFG scale: 6.5, Seed: 1234, Size: 64x48, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "foo: 0123456789ab, bar: ba9876543210", \
Version: v1.10.1"""


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def plain_image(sampler: str, schedule: str, *, prompt: str, negative: str, steps: int, cfg: float, seed: int,
                width: int, height: int) -> np.ndarray:
    from dumpunet.recorder.samplers import make_scheduler
    from dumpunet.recorder.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config, seed=seed, schedule=schedule)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=cfg, height=height,
               width=width, generator=[torch.Generator().manual_seed(seed)], output_type="np").images
    return (out[0] * 255).round().astype(np.uint8)


def test_pasted_infotext_records_with_its_parameters(tmp_path):
    out = tmp_path / "i.zarr"
    res = invoke("record", "--infotext", INFOTEXT, "--blocks", "M00", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "warning: infotext fields not used: Lora hashes, Version"
    assert lines[1] == ("note: the infotext's Model hash 6ce0161689 (Model: v1-5-pruned-emaonly) is not checked: "
                        "tiny-sd1 is not a checkpoint file")
    assert sum("infotext fields not used" in line for line in lines) == 1
    run = dumpunet.open(out).run()
    info = run.info
    assert (info.prompt, info.negative_prompt) == ("a cute girl, pink hair", "lowres,\nbad anatomy")
    assert (info.sampler, info.seed, info.cfg, info.requested_steps) == ("DPM++ 3M SDE Exponential", 1234, 6.5, 3)
    # a new sampler and schedule: the picture is the plain pipeline's, bit for bit
    expected = plain_image("DPM++ 3M SDE", "Exponential", prompt="a cute girl, pink hair", negative="lowres,\nbad anatomy",
                           steps=3, cfg=6.5, seed=1234, width=64, height=48)
    image = dumpunet.open(out).image(0)
    assert image.shape == (48, 64, 3)
    np.testing.assert_array_equal(image, expected)


def test_options_given_on_the_command_line_win(tmp_path):
    out = tmp_path / "w.zarr"
    res = invoke("record", "--infotext", INFOTEXT, "--sampling-steps", "2", "--seed", "7", "--sampler", "Euler",
                 "--height", "64", "--prompt", "a cat", "--blocks", "M00", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    info = dumpunet.open(out).run().info
    # the infotext's schedule type goes with its sampler, so --sampler Euler is plain Euler
    assert (info.sampler, info.seed, info.requested_steps, info.prompt) == ("Euler", 7, 2, "a cat")
    assert (info.negative_prompt, info.cfg) == ("lowres,\nbad anatomy", 6.5)
    assert dumpunet.open(out).image(0).shape == (64, 64, 3)


def test_png_parameters_are_read(tmp_path):
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", INFOTEXT.replace("Steps: 3", "Steps: 2"))
    png = tmp_path / "00012-1234.png"
    Image.new("RGB", (64, 48)).save(png, pnginfo=meta)
    out = tmp_path / "p.zarr"
    res = invoke("record", "--infotext", str(png), "--blocks", "M00", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    info = dumpunet.open(out).run().info
    assert (info.sampler, info.requested_steps, info.prompt) == ("DPM++ 3M SDE Exponential", 2, "a cute girl, pink hair")


def test_schedule_option_names_the_sampler_as_a1111_did(tmp_path):
    out = tmp_path / "s.zarr"
    res = invoke("record", "--sampler", "DPM++ 2M", "--schedule", "karras", "--sampling-steps", "2", "--seed", "3",
                 "--width", "64", "--height", "64", "--blocks", "M00", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    assert dumpunet.open(out).run().info.sampler == "DPM++ 2M Karras"
    expected = plain_image("DPM++ 2M Karras", "Automatic", prompt="", negative="", steps=2, cfg=7.0, seed=3,
                           width=64, height=64)
    np.testing.assert_array_equal(dumpunet.open(out).image(0), expected)


def _png_without_parameters(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    return path


def _broken_png(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return path


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: "missing.png", [], "Error: no image file at missing.png"),
        (_png_without_parameters, [], "holds no A1111 parameters (no 'parameters' text chunk and no EXIF UserComment)"),
        (_broken_png, [], "as an image: "),
        (lambda p: "a cat\nSteps: 3, Seed: 1, Size: 64by64", [],
         "Error: pasted text: infotext field Size must be WIDTHxHEIGHT, e.g. 512x768, got '64by64'"),
        (lambda p: "a cat\nSteps: 3, Sampler: Restart, Size: 64x64", [],
         "Error: sampler 'Restart' has no diffusers scheduler, so dumpunet cannot run it; choose one of: Euler, "),
        (lambda p: "a cat\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Align Your Steps", [],
         "Error: schedule type 'Align Your Steps' has no diffusers equivalent; choose one of: Automatic, "),
        (lambda p: "a cat\nSteps: 3, Sampler: Euler a, Schedule type: Karras", [],
         "Error: sampler 'Euler a' takes no Karras schedule: diffusers' EulerAncestralDiscreteScheduler has no "
         "use_karras_sigmas option"),
        (lambda p: "a cat\nSteps: 3, Sampler: Euler, Size: 100x64", [], "Error: --width must be a positive multiple of 8, got 100"),
        (lambda p: None, ["--sampler", "LCM", "--sampling-steps", "60"], "Error: sampler 'LCM' with --sampling-steps 60: "),
    ],
)
def test_bad_infotext_gets_one_line_and_no_store(tmp_path, make, extra, message):
    out = tmp_path / "x.zarr"
    source = make(tmp_path)
    args = ["record", "--out", str(out), "--blocks", "M00", "--quiet", *extra]
    if source is not None:
        args += ["--infotext", str(source)]
    res = invoke(*args)
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], res.output
    assert res.output.rstrip("\n").endswith(errors[0]) and "Traceback" not in res.output
    assert not out.exists()


def test_request_from_infotext_lets_options_win(tmp_path):
    req = RecordRequest.from_infotext(INFOTEXT, out=tmp_path / "r.zarr", seed=5)
    assert (req.seed, req.sampling_steps, req.sampler, req.schedule, req.width, req.height) == (5, 3, "DPM++ 3M SDE", "Exponential",
                                                                                      64, 48)

"""render --final: a run's final images as PNG, run as its --help writes it."""

from __future__ import annotations

import json
import shlex

import numpy as np
from click.testing import CliRunner
from PIL import Image
from synthetic_stores import final_image, make_paired_store

from dumpunet.cli import main

EXAMPLE = "render girl.zarr --final --out finals/"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_the_help_example_writes_each_final_image_pixel_for_pixel(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_paired_store(tmp_path / "girl.zarr", n_images=2)  # runs base and layered (the default), 2 images each
    assert f"dumpunet {EXAMPLE}" in run("render", "--help").output
    res = run(*shlex.split(EXAMPLE))
    assert res.exit_code == 0, res.output
    entries = json.loads((tmp_path / "finals" / "manifest.json").read_text())["files"]
    assert [(e["file"], e["run"], e["image"], e["kind"]) for e in entries] == [
        ("final-img0.png", "layered", 0, "final"), ("final-img1.png", "layered", 1, "final")]
    for i in (0, 1):
        with Image.open(tmp_path / "finals" / f"final-img{i}.png") as img:
            assert np.array_equal(np.asarray(img), final_image(1, i))  # the layered run's (k = 1)
    assert res.stderr.splitlines()[-1] == "wrote 2 final images to finals (parameters in manifest.json)"
    res = run("render", "girl.zarr", "--final", "--run", "base", "--images", "1", "--out", "base", "--quiet")
    assert res.exit_code == 0 and res.output == ""
    with Image.open(tmp_path / "base" / "final-img1.png") as img:
        assert np.array_equal(np.asarray(img), final_image(0, 1))
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["final-img1.png", "manifest.json"]


def test_final_refuses_what_it_does_not_take_and_an_unfinished_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_paired_store(tmp_path / "girl.zarr", unfinished=("layered",))
    res = run("render", "girl.zarr", "--final", "--blocks", "M00", "--steps", "5", "--out", "f")
    assert res.exit_code == 2
    assert "Error: --final writes final images; it takes only --run and --images, not --blocks, --steps" in res.output
    res = run("render", "girl.zarr", "--final", "--sweep", "--out", "f")
    assert res.exit_code == 2 and "give --sweep (a contact sheet) or --final (each final image), not both" in res.output
    res = run("render", "girl.zarr", "girl.zarr", "--final", "--out", "f")
    assert res.exit_code == 2 and "--final takes one store, got 2" in res.output
    res = run("render", "girl.zarr", "--final", "--out", "f")
    assert (res.exit_code, res.output) == (1, "Error: run 'layered' has no final images (the recording did not finish)\n")
    res = run("render", "girl.zarr", "--final", "--run", "base", "--images", "3", "--out", "f")
    assert res.exit_code == 1 and res.output.startswith("Error: bad image spec: image 3 out of range 0..0")
    assert not (tmp_path / "f").exists()

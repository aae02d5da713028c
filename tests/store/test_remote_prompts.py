"""``record --prompts FILE --out s3://...``: recorded locally, uploaded call by call, resumed and grown against the bucket (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner
from interrupts import interrupt_run

import dumpunet
from dumpunet.cli import main
from dumpunet.store.validate import validate

pytestmark = pytest.mark.recorder

FAST = ["--sampling-steps", "2", "--blocks", "IN00,OUT11", "--attention", "none", "--width", "64", "--height", "64",
        "--seed", "4"]


def scratch_left(name: str) -> list[Path]:
    return [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("dumpunet-upload-*") if (p / name).exists()]


def test_a_prompt_list_recorded_to_s3_resumes_and_grows_against_the_bucket(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("DUMPUNET_UPLOAD_INTERVAL", "0.2")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    url = f"s3://{s3.bucket}/p.zarr"
    args = ["record", "--prompts", str(prompts), *FAST, "--out", url]
    restore = interrupt_run(monkeypatch, "p0002")  # after its first step
    cut = CliRunner().invoke(main, args, catch_exceptions=False)
    assert cut.exit_code == 1
    assert cut.output.splitlines()[-1].startswith(f"Error: interrupted; the prompts recorded completely stay in {url}:")
    remote = dumpunet.open(url)
    assert [(n, r.complete, r.steps) for n, r in remote.runs.items()] == [
        ("p0000", True, [1, 2]), ("p0001", True, [1, 2]), ("p0002", False, [1])]  # the cut prompt's step 1 reached it
    assert validate(url).ok
    images = [remote.image(run=n) for n in ("p0000", "p0001")]
    assert not scratch_left("p.zarr")

    restore()
    s3.clear()
    again = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert again.stderr.splitlines()[0] == f"skipping 2 of 3 prompts already recorded in {url}"
    assert json.loads(again.stdout)["recorded"] == ["p0002"] and json.loads(again.stdout)["out"] == url
    written = [r.path for r in s3.log() if r.method == "PUT"]
    assert written and not [p for p in written if "/runs/p0000/" in p or "/runs/p0001/" in p]  # kept runs: not sent again
    remote = dumpunet.open(url)
    assert [(n, r.complete, r.steps, r.info.prompt) for n, r in remote.runs.items()] == [
        ("p0000", True, [1, 2], "a cat"), ("p0001", True, [1, 2], "a dog"), ("p0002", True, [1, 2], "a bird")]
    for name, image in zip(("p0000", "p0001"), images):
        np.testing.assert_array_equal(remote.image(run=name), image)
    report = validate(url)
    assert report.ok and report.notes == [], (report.problems, report.notes)

    prompts.write_text("a cat\na dog\na bird\na fish\n")
    grown = CliRunner().invoke(main, [*args, "--quiet", "--json"], catch_exceptions=False)
    assert grown.exit_code == 0, grown.output
    assert (json.loads(grown.stdout)["recorded"], json.loads(grown.stdout)["skipped"]) == (
        ["p0003"], ["p0000", "p0001", "p0002"])
    remote = dumpunet.open(url)
    assert remote.run_names == ["p0000", "p0001", "p0002", "p0003"] and remote.run("p0003").complete
    assert (remote.info.prompt_list.count, remote.run("p0003").info.prompt_line) == (4, 4)
    assert validate(url).ok
    assert not scratch_left("p.zarr")

    local = tmp_path / "p.zarr"  # the same list recorded locally: the same pictures
    assert CliRunner().invoke(main, ["record", "--prompts", str(prompts), *FAST, "--out", str(local), "--quiet"]).exit_code == 0
    for name in remote.run_names:
        np.testing.assert_array_equal(remote.image(run=name), dumpunet.open(local).image(run=name))
        np.testing.assert_array_equal(remote.run(name).features("OUT11", 2), dumpunet.open(local).run(name).features("OUT11", 2))


def test_prompts_to_a_url_holding_something_else_is_refused_before_the_model_loads(s3, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    url = f"s3://{s3.bucket}/p.zarr"
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint)
    fs.pipe(f"{s3.bucket}/p.zarr/notes.txt", b"mine")
    res = CliRunner().invoke(main, ["record", "--prompts", str(prompts), *FAST, "--out", url])
    assert res.exit_code == 1
    assert res.output == f"Error: --out {url} already holds 1 object(s); choose another URL\n"
    assert fs.cat(f"{s3.bucket}/p.zarr/notes.txt") == b"mine"

"""The diff command and render --sweep, run exactly as their --help writes them."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_stores import make_paired_store, make_store
from test_render import pixels

import dumpunet
from dumpunet.cli import main
from dumpunet.specs import SD1_BLOCKS

EXAMPLES = [
    'diff girl.zarr --blocks IN00-OUT11 --steps 1-20 --method "Red/Blue" --out diff/',
    "diff sweep.zarr --pair IN04 --average 2-norm --out diff-IN04/",
    "render sweep.zarr --sweep --out sheet/",
    "diff girl.zarr --blocks OUT11 --steps 20 --export bin --out diff-dump/",
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-diff")
    # a full --pair recording (25 blocks, steps 1-20), and a small sweep
    make_paired_store(root / "girl.zarr", blocks=tuple(SD1_BLOCKS), steps=tuple(range(1, 21)))
    make_paired_store(root / "sweep.zarr", labels=("IN04", "M00"))
    return root


@pytest.fixture
def here(stores, tmp_path, monkeypatch):
    for name in ("girl.zarr", "sweep.zarr"):
        (tmp_path / name).symlink_to(stores / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("line", EXAMPLES)
def test_documented_examples_work_verbatim(here, line):
    res = run(*shlex.split(line), *(["--quiet"] if line.startswith("diff girl") else []))
    assert res.exit_code == 0, res.output
    folder = here / shlex.split(line)[-1]
    listed = [e["file"] for e in json.loads((folder / "manifest.json").read_text())["files"]]
    assert sorted(listed + ["manifest.json"]) == sorted(p.name for p in folder.iterdir())
    finals = ["final-base-img0.png", "final-diff-img0.png", "final-diff-norm-img0.png", "final-layered-img0.png"]
    # maps, summary.csv/png, finals; the last: OUT11's map and its 4 channels as .bin files
    expected = {0: 25 * 20 + 2 + 4, 1: 4 * 4 + 2 + 4, 2: 1, 3: 1 + 4 + 2 + 4}[EXAMPLES.index(line)]
    assert len(listed) == expected
    if line.startswith("diff"):
        assert set(finals + ["summary.csv", "summary.png"]) <= set(listed)
        noun = "files"
    else:
        assert listed == ["sweep-img0.png"]
        noun = "contact sheet"
    if line.startswith("diff girl"):  # run with --quiet: no bar, no closing line
        assert res.stderr == ""
    else:
        assert res.stderr.splitlines()[-1] == f"wrote {len(listed)} {noun} to {folder.name} (parameters in manifest.json)"
    if EXAMPLES.index(line) == 0:
        assert "diff-M00-step020-img0-cond-rb-autosym-block.png" in " ".join(listed)


def test_cli_and_api_write_the_same_files(here):
    assert run("diff", "sweep.zarr", "--pair", "M00", "--blocks", "OUT11", "--steps", "20", "--method", "White/Black",
               "--transform", "linear", "--out", "cli", "--quiet").exit_code == 0
    files = dumpunet.diff("sweep.zarr", dumpunet.Pick(blocks="OUT11", steps="20"),
                          dumpunet.ColorSpec(method="White/Black", transform="linear"), pair="M00", out="api", progress=False)
    assert sorted(f.path.name for f in files) == sorted(p.name for p in (here / "cli").iterdir() if p.suffix != ".json")
    for f in files:
        if f.path.suffix == ".png":
            np.testing.assert_array_equal(pixels(f), pixels(here / "cli" / f.path.name))
        else:
            assert f.path.read_text() == (here / "cli" / f.path.name).read_text()


def test_json_quiet_and_no_finals(here):
    res = run("diff", "sweep.zarr", "--blocks", "M00", "--steps", "5", "--no-finals", "--json", "--quiet",
              "--out", "d", "--input")
    assert res.exit_code == 1 and res.output.startswith("Error: block M00 has no recorded input in run 'IN04'")
    res = run("diff", "sweep.zarr", "--blocks", "M00", "--steps", "5", "--no-finals", "--json", "--quiet", "--out", "d")
    assert res.exit_code == 0, res.output
    entries = json.loads(res.stdout)
    assert [e["file"] for e in entries] == [
        "diff-M00-step005-img0-cond-bwr-autosym-block.png",
        "summary.csv", "summary.png",
    ]
    assert entries[0]["pair"] == "IN04" and entries[0]["colorization"]["transform"] == "autosym"
    assert res.stderr == ""


def test_mistakes_exit_1_with_one_message_and_bad_options_exit_2(here):
    res = run("diff", "sweep.zarr", "--pair", "OUT11", "--out", "d")
    assert (res.exit_code, res.output) == (1, "Error: no pair 'OUT11' in sweep.zarr (pairs: IN04, M00)\n")
    make_store(here / "plain.zarr")
    res = run("diff", "plain.zarr", "--out", "d")
    assert (res.exit_code, res.output) == (1, "Error: plain.zarr holds no paired runs (record with --pair, or dumpunet sweep)\n")
    res = run("render", "plain.zarr", "--sweep", "--out", "s")
    assert (res.exit_code, res.output) == (1, "Error: plain.zarr holds no paired runs (record with --pair, or dumpunet sweep)\n")
    res = run("render", "sweep.zarr", "--sweep", "--blocks", "M00", "--method", "pca", "--out", "s")
    assert res.exit_code == 2
    assert "Error: --sweep lays out final images; it takes only --run and --images, not --blocks, --method" in res.output
    res = run("render", "sweep.zarr", "girl.zarr", "--sweep", "--out", "s")
    assert res.exit_code == 2 and "Error: --sweep takes one store, got 2" in res.output
    res = run("diff", "sweep.zarr", "--run", "base", "--out", "d")
    assert res.exit_code == 2 and "No such option '--run'" in res.output
    assert not (here / "d").exists() and not (here / "s").exists()


@pytest.mark.parametrize("command", ["diff", "render"])
def test_help_carries_runnable_examples(command):
    res = run(command, "--help")
    assert res.exit_code == 0
    for example in EXAMPLES:
        if example.startswith(command):
            assert f"dumpunet {example}" in res.output

"""``dumpunet diff A B``: the difference of two stores (A - B), their runs named as STORE:RUN."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_stores import make_paired_store, make_store

import dumpunet
from dumpunet.cli import main


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff-stores")
    make_store(root / "a.zarr", n_images=2)
    make_store(root / "b.zarr", n_images=2, other_seed_steps=(10,))  # equal to a.zarr except at step 10
    make_paired_store(root / "sweep.zarr", labels=("IN04", "M00"))
    return root


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def summary(folder):
    with open(folder / "summary.csv", newline="") as f:
        return {(r["block"], int(r["step"]), int(r["image"]), r["guidance"]): r for r in csv.DictReader(f)}


def test_two_stores_give_a_minus_b_per_block_and_step(stores, tmp_path):
    a, b = dumpunet.open(stores / "a.zarr"), dumpunet.open(stores / "b.zarr")
    res = run("diff", stores / "a.zarr", stores / "b.zarr", "--blocks", "IN04,OUT11", "--steps", "10,20", "--guidance", "both",
              "--out", tmp_path / "d", "--quiet", "--json")
    assert res.exit_code == 0, res.output
    rows = summary(tmp_path / "d")
    assert len(rows) == 2 * 2 * 2 * 2  # blocks x steps x images x halves
    for block in ("IN04", "OUT11"):
        for image in (0, 1):
            for guidance in ("uncond", "cond"):
                x = a.features(block, step=10, guidance=guidance, image=image).astype(np.float32)
                y = b.features(block, step=10, guidance=guidance, image=image).astype(np.float32)
                row = rows[(block, 10, image, guidance)]
                assert float(row["mean_abs_diff"]) == pytest.approx(np.abs(x - y).mean(), rel=1e-5)
                assert float(row["base_mean_abs"]) == pytest.approx(np.abs(y).mean(), rel=1e-5)
                assert float(rows[(block, 20, image, guidance)]["mean_abs_diff"]) == 0  # the stores agree at 20
    listed = {e["file"] for e in json.loads(res.stdout)}
    assert "diff-OUT11-step010-img1-cond-bwr-autosym-block.png" in listed
    assert {"summary.png", "final-diff-img0.png", "final-layered-img1.png"} <= listed
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert "b.zarr" in json.dumps(manifest)  # the base store is on record beside the maps


def test_the_api_and_named_runs_write_what_the_cli_writes(stores, tmp_path):
    args = ["--blocks", "M00", "--steps", "10", "--quiet"]
    assert run("diff", stores / "a.zarr", stores / "b.zarr", *args, "--out", tmp_path / "cli").exit_code == 0
    res = run("diff", f"{stores / 'a.zarr'}:main", f"{stores / 'b.zarr'}:main", *args, "--out", tmp_path / "named")
    assert res.exit_code == 0, res.output
    dumpunet.diff(stores / "a.zarr", dumpunet.Pick(blocks="M00", steps="10"), base=stores / "b.zarr",
                  out=tmp_path / "api", progress=False)
    pngs = sorted(p.name for p in (tmp_path / "cli").glob("*.png"))
    assert len(pngs) == 2 + 1 + 4 * 2  # maps (2 images, cond), summary chart, 4 finals an image
    for other in ("named", "api"):
        assert [(tmp_path / other / n).read_bytes() for n in pngs] == [(tmp_path / "cli" / n).read_bytes() for n in pngs]


def test_a_run_of_a_sweep_against_another_store(stores, tmp_path):
    """``sweep.zarr:M00`` minus ``sweep.zarr:base`` is what ``diff sweep.zarr --pair M00`` draws."""
    args = ["--blocks", "OUT11", "--steps", "20", "--quiet"]
    sweep = stores / "sweep.zarr"
    assert run("diff", f"{sweep}:M00", f"{sweep}:base", *args, "--out", tmp_path / "two").exit_code == 0
    assert run("diff", sweep, "--pair", "M00", *args, "--out", tmp_path / "pair").exit_code == 0
    two, pair = summary(tmp_path / "two"), summary(tmp_path / "pair")
    assert two.keys() == pair.keys() and len(two) == 1
    assert [two[k]["mean_abs_diff"] for k in two] == [pair[k]["mean_abs_diff"] for k in two]
    assert float(next(iter(two.values()))["mean_abs_diff"]) > 0


@pytest.mark.parametrize(("args", "message"), [
    (["{a}", "{sweep}", "--blocks", "OUT10"], "block OUT10 has recorded outputs in run 'main' of a.zarr but not in base run"),
    (["{a}:nope", "{b}"], "nope"),
    (["{a}", "{b}:nope"], "nope"),
    (["{a}", "{b}", "{sweep}"], "got 3 stores"),
    (["{a}", "{b}", "--pair", "M00"], "--pair picks a pair in one store"),
    (["{a}:main"], "a pair in one store is picked with --pair"),
])
def test_what_cannot_be_compared_is_one_line_and_writes_nothing(stores, tmp_path, args, message):
    paths = {k: stores / f"{k}.zarr" for k in ("a", "b", "sweep")}
    res = run("diff", *[a.format(**paths) for a in args], "--out", tmp_path / "out")
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_the_title_names_both_stores_and_runs(stores):
    from dumpunet.analyzer.color.spec import DIFF_COLOR
    from dumpunet.analyzer.grid_labels import title_lines
    from dumpunet.analyzer.selection import select_stores

    sel = select_stores(dumpunet.open(stores / "a.zarr"), dumpunet.Pick(blocks="OUT11", steps="20"),
                        dumpunet.open(stores / "b.zarr"))
    first = title_lines(sel, next(iter(sel.slabs())), DIFF_COLOR, average=None, scale=1)[0]
    assert " | diff a.zarr:main - b.zarr:main | OUT11" in first

"""dumpunet.diff: maps equal renders of layered - base by hand, exact summary, chart, finals, errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from synthetic_stores import final_image, make_paired_store
from test_render import by_hand, pixels

import dumpunet
from dumpunet.analyzer.color.spec import DIFF_COLOR
from values import split
from dumpunet.analyzer.color.colorize import ColorSpec, colorize
from dumpunet.analyzer.colormaps import colormap
from dumpunet.analyzer.reduce import channel_average
from dumpunet.analyzer.step_table import CELL, INF_COLOR
from dumpunet.analyzer.selection import DiffStats, select_pair
from dumpunet.errors import DumpUnetError, SelectionError, StoreError

BLOCKS = ("IN00", "IN04", "M00", "OUT11")


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """``record --pair`` layout: runs base and layered, two images."""
    return make_paired_store(tmp_path_factory.mktemp("diff") / "girl.zarr", n_images=2)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """``sweep`` layout: runs base, IN04, M00; pairs labelled by block."""
    return make_paired_store(tmp_path_factory.mktemp("diff") / "sweep.zarr", labels=("IN04", "M00"))


def diff(store, out, **kw):
    """Diff into bare tiles (plain) unless ``plain=False``: these tests check the grid's pixels."""
    pick, color, style, rest = split({"plain": True, **kw}, color=DIFF_COLOR)
    return dumpunet.diff(store, pick, color, style, out=out, progress=False, **rest)


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def by_numpy(store, block, step, run="layered", base="base", **kw):
    """layered - base of one map, by hand in numpy (float32 subtraction)."""
    st = dumpunet.open(store)
    return st.features(block, step, run=run, **kw).astype(np.float32) - st.features(block, step, run=base, **kw).astype(np.float32)


def test_maps_are_renders_of_layered_minus_base(paired, tmp_path):
    spec = ColorSpec("Red/Blue", "linear", clamp_min=-0.5, clamp_max=0.5)
    files = diff(paired, tmp_path, blocks="IN04,M00", steps="5,20", images="1", method="Red/Blue",
                 transform="linear", clamp_min=-0.5, clamp_max=0.5, finals=False)
    maps = [f for f in files if f.params["kind"] == "diff"]
    assert [f.path.name for f in maps] == [
        f"diff-{b}-step{s:03d}-img1-cond-{spec.slug()}.png" for s in (5, 20) for b in ("IN04", "M00")
    ]
    for f in maps:
        d = by_numpy(paired, f.params["block"], f.params["step"], image=1)
        cols, rows = {6: (2, 3), 8: (4, 2)}[d.shape[0]]  # the original's layout
        np.testing.assert_array_equal(pixels(f), by_hand(colorize(d, spec), cols, rows))
        assert {k: f.params[k] for k in ("kind", "run", "base_run", "pair", "image")} == {
            "kind": "diff", "run": "layered", "base_run": "base", "pair": "layered", "image": 1}
    assert "-rb-linear-min-0.5-max0.5" in maps[0].path.name


def test_default_colorization_average_scale_channels_and_auto_scope(paired, tmp_path):
    (f,) = [f for f in diff(paired, tmp_path, blocks="M00", steps="10", images="0", average="2-norm", scale=2,
                            finals=False) if f.params["kind"] == "diff"]
    assert f.path.name == f"diff-M00-step010-img0-cond-avg-2norm-x2-{DIFF_COLOR.slug()}.png"
    d = by_numpy(paired, "M00", 10)
    avg = channel_average(d, "2-norm")
    np.testing.assert_array_equal(pixels(f), by_hand(colorize(avg[None], DIFF_COLOR), 1, 1, 2))
    # A norm is never negative: one-sided, white (0) to red (its max); no blue anywhere.
    tile = colorize(avg[None], DIFF_COLOR)[0]
    assert f.params["range"] == [float(avg.min()), float(avg.max())] and avg.min() >= 0
    assert (tile[..., 2] <= tile[..., 0]).all() and tuple(tile.reshape(-1, 3)[np.argmax(avg)]) == (255, 0, 0)

    spec = ColorSpec("White/Black", "auto01", auto_scope="run")
    files = diff(paired, tmp_path / "run", blocks="IN00,OUT11", steps="1,20", images="0", channels="1-2",
                 guidance="both", method="White/Black", transform="auto01", auto_scope="run", finals=False)
    maps = [f for f in files if f.params["kind"] == "diff"]
    ds = {(f.params["block"], f.params["step"], f.params["guidance"]):
          by_numpy(paired, f.params["block"], f.params["step"], guidance=f.params["guidance"])[1:3] for f in maps}
    lo = min(float(d.min()) for d in ds.values())
    hi = max(float(d.max()) for d in ds.values())
    assert len(maps) == 8 and all(f.params["range"] == [lo, hi] for f in maps)
    for f in maps:
        d = ds[(f.params["block"], f.params["step"], f.params["guidance"])]
        assert f.path.name.startswith(f"diff-{f.params['block']}-step{f.params['step']:03d}-img0-{f.params['guidance']}-ch1-2-")
        np.testing.assert_array_equal(pixels(f), by_hand(colorize(d, spec, minmax=(lo, hi)), 2, 1))


def test_summary_csv_is_exact(paired, tmp_path):
    diff(paired, tmp_path, blocks="IN00,M00", steps="1,20", guidance="both", finals=False)
    rows = read_csv(tmp_path / "summary.csv")
    assert list(rows[0]) == ["block", "step", "image", "guidance", "mean_abs_diff", "base_mean_abs", "relative"]
    keys = [(r["block"], int(r["step"]), int(r["image"]), r["guidance"]) for r in rows]
    assert keys == [(b, s, i, g) for b in ("IN00", "M00") for s in (1, 20) for i in (0, 1) for g in ("uncond", "cond")]
    st = dumpunet.open(paired)
    for r, (b, s, i, g) in zip(rows, keys):
        d = by_numpy(paired, b, s, image=i, guidance=g)
        base = st.features(b, s, run="base", image=i, guidance=g).astype(np.float64)
        mad, bma = np.abs(d).mean(dtype=np.float64), np.abs(base).mean()
        assert (float(r["mean_abs_diff"]), float(r["base_mean_abs"]), float(r["relative"])) == (mad, bma, mad / bma)


def test_summary_when_the_base_is_zero(tmp_path):
    p = make_paired_store(tmp_path / "z.zarr", blocks=("M00",), zero_base=(("M00", 5),))
    diff(p, tmp_path / "out", steps="1,5", finals=False)
    rows = read_csv(tmp_path / "out/summary.csv")
    assert [r["relative"] for r in rows][1] == "inf" and float(rows[1]["base_mean_abs"]) == 0
    assert math.isfinite(float(rows[0]["relative"]))
    assert DiffStats(0.0, 0.0).relative == 0.0 and DiffStats(2.0, 0.0).relative == math.inf
    assert DiffStats(1.0, 4.0).relative == 0.25
    doc = json.loads((tmp_path / "out/manifest.json").read_text())
    (chart,) = [e for e in doc["files"] if e["file"] == "summary.png"]
    assert chart["legend"] == [{"label": "M00", "peak": float(rows[0]["relative"])}]  # inf is no peak
    img = pixels(tmp_path / "out/summary.png")
    assert ((img == INF_COLOR).all(axis=2).sum()) >= CELL[0] * CELL[1]  # step 5's cell: white


def test_summary_chart_is_a_block_by_step_heatmap(paired, tmp_path):
    files = diff(paired, tmp_path, images="0", finals=False)
    (chart,) = [f for f in files if f.path.name == "summary.png"]
    img = pixels(chart)
    assert chart.params["size"] == [img.shape[1], img.shape[0]]
    rows = read_csv(tmp_path / "summary.csv")
    peak = {b: max(float(r["relative"]) for r in rows if r["block"] == b) for b in BLOCKS}
    legend = chart.params["legend"]
    assert [e["label"] for e in legend] == sorted(BLOCKS, key=lambda b: -peak[b])
    assert [e["peak"] for e in legend] == sorted(peak.values(), reverse=True)
    # every (block, step) cell holds the colour of its relative change on [0, largest]
    top = max(peak.values())
    for r in rows:
        want = colormap(np.array(float(r["relative"]) / top))
        assert (img == want).all(axis=2).sum() >= CELL[0] * CELL[1], (r["block"], r["step"])
    assert chart.params["images"] == "0" and chart.params["guidance"] == ["cond"]


def test_final_images_and_their_pixel_difference(paired, tmp_path):
    files = diff(paired, tmp_path, blocks="M00", steps="20")
    by_name = {f.path.name: f for f in files}
    for i in (0, 1):
        base, layered = final_image(0, i), final_image(1, i)
        np.testing.assert_array_equal(pixels(by_name[f"final-base-img{i}.png"]), base)
        np.testing.assert_array_equal(pixels(by_name[f"final-layered-img{i}.png"]), layered)
        d = np.abs(layered.astype(int) - base.astype(int))
        assert 0 < d.max() < 256 and (d == 0).any()
        np.testing.assert_array_equal(pixels(by_name[f"final-diff-img{i}.png"]), d)
        np.testing.assert_array_equal(pixels(by_name[f"final-diff-norm-img{i}.png"]), np.round(d * 255 / d.max()))
        assert by_name[f"final-diff-img{i}.png"].params["max"] == d.max()
        assert by_name[f"final-base-img{i}.png"].params["run"] == "base"
        assert by_name[f"final-layered-img{i}.png"].params["run"] == "layered"
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["file"] for e in doc["files"]] == sorted(by_name)
    assert sorted([*by_name, "manifest.json"]) == sorted(p.name for p in tmp_path.iterdir())


def test_a_sweep_pair_by_label_and_pca_on_differences(swept, tmp_path):
    sel = select_pair(dumpunet.open(swept), dumpunet.Pick(blocks="OUT11", steps="20"), pair="m00")
    assert (sel.base.name, sel.run.name, sel.pair["label"]) == ("base", "M00", "M00")
    np.testing.assert_array_equal(sel.read(next(sel.slabs())), by_numpy(swept, "OUT11", 20, run="M00"))
    first = select_pair(dumpunet.open(swept), dumpunet.Pick(blocks="OUT11", steps="20"))
    assert first.run.name == "IN04"
    files = diff(swept, tmp_path, pair="IN04", blocks="OUT11", steps="1,20", method="pca", finals=False)
    maps = [f for f in files if f.params["kind"] == "diff"]
    assert [f.params["pca"]["key"] for f in maps] == ["OUT11-diff", "OUT11-diff"]
    assert maps[0].path.name.startswith("diff-OUT11-step001-img0-cond-pca-")


def test_the_render_pipeline_still_renders_features(paired, tmp_path):
    """Diffs share render's pipeline; rendering the base run gives the base's features."""
    (f,) = dumpunet.render(paired, dumpunet.Pick(run="base", blocks="M00", steps="5", images="0"),
                           style=dumpunet.GridStyle(plain=True), out=tmp_path, progress=False)
    assert f.path.name == "M00-step005-img0-cond-hsl-auto01.png" and f.params["kind"] == "render"
    x = dumpunet.open(paired).features("M00", 5, run="base")
    np.testing.assert_array_equal(pixels(f), by_hand(colorize(x, ColorSpec()), 4, 2))


def test_no_pair_unknown_pair_and_run_are_refused(girl, swept, tmp_path):
    out = tmp_path / "out"
    cases = [
        (girl, {}, f"{girl} holds no paired runs (record with --pair, or dumpunet sweep)"),
        (swept, {"pair": "OUT11"}, f"no pair 'OUT11' in {swept} (pairs: IN04, M00)"),
        (swept, {"run": "base"}, "diff reads the two runs of a pair: choose it with pair=..., not run=..."),
        (swept, {"blocks": "IN01"}, "block IN01 has no recorded output in run 'IN04' (recorded: IN00, IN04, M00, OUT11)"),
    ]
    for store, kw, message in cases:
        with pytest.raises(DumpUnetError) as err:
            diff(store, out, **kw)
        assert str(err.value) == message
    assert not out.exists()


def test_runs_that_do_not_match(tmp_path):
    out = tmp_path / "out"
    shapes = make_paired_store(tmp_path / "shapes.zarr", base_shapes={"M00": (8, 4, 4)})
    missing = make_paired_store(tmp_path / "steps.zarr", base_steps=(1, 5, 10))
    unfinished = make_paired_store(tmp_path / "unfinished.zarr", unfinished=("layered",))
    with pytest.raises(StoreError) as err:  # a run whose block contradicts the store's block table is damage
        diff(shapes, out)
    assert str(err.value) == f"{shapes}: runs/base/blocks/M00/output: shape (8, 4, 4), block table says (8, 2, 2)"
    cases = [
        (missing, {}, "base run 'base': step 20 was not recorded (recorded steps: 1,5,10)"),
        (unfinished, {}, "run 'layered' has no final images (the recording did not finish); "
                         "diff its recorded steps without the final images (--no-finals)"),
    ]
    for store, kw, message in cases:
        with pytest.raises(SelectionError) as err:
            diff(store, out, **kw)
        assert str(err.value) == message
    assert not out.exists()
    assert len(diff(shapes, out, blocks="IN00", steps="1", finals=False)) == 3  # map, summary.csv, summary.png
    assert len(diff(missing, out, steps="1,5,10", finals=False)) == 14
    assert len(diff(unfinished, out, blocks="IN00", steps="1", finals=False)) == 3


def test_a_failure_mid_diff_leaves_whole_files_and_an_exact_manifest(paired, tmp_path, monkeypatch):
    from dumpunet.analyzer import diff as diff_module

    def broken(*a, **kw):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(diff_module, "summary_chart", broken)
    with pytest.raises(RuntimeError):
        diff(paired, tmp_path, blocks="M00", steps="20", images="0")
    names = sorted(p.name for p in tmp_path.iterdir())
    listed = [e["file"] for e in json.loads((tmp_path / "manifest.json").read_text())["files"]]
    assert names == sorted(listed + ["manifest.json"])
    assert listed == [f"diff-M00-step020-img0-cond-{DIFF_COLOR.slug()}.png", "summary.csv"]

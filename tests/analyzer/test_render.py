"""dumpunet.render: exact grids against colorize + hand tiling, names, manifest, scopes, errors, atomicity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from synthetic_stores import make_store, mark_interrupted
from PIL import Image
from values import split

import dumpunet
from dumpunet.analyzer import render as render_module
from dumpunet.analyzer.color.colorize import ColorSpec, colorize, map_ranges, merge_ranges
from dumpunet.analyzer.grid import grid_shape
from dumpunet.analyzer.reduce import channel_average
from dumpunet import GridStyle, Pick
from dumpunet.errors import (
    DumpUnetError, ExpressionError, IncompleteStepError, OptionError, OutputError, SelectionError, SpecError, StoreError,
)

DEFAULT_SLUG = "hsl-auto01"


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def by_hand(tiles: np.ndarray, cols: int, rows: int, scale: int = 1) -> np.ndarray:
    """Lay tiles out row by row with 1-pixel black gaps, each enlarged ``scale`` times (plain numpy)."""
    n, h, w = tiles.shape[:3]
    th, tw = h * scale, w * scale
    out = np.zeros((rows * (th + 1) - 1, cols * (tw + 1) - 1, *tiles.shape[3:]), np.uint8)
    for k in range(n):
        y, x = divmod(k, cols)
        big = tiles[k].repeat(scale, axis=0).repeat(scale, axis=1)
        out[y * (th + 1) : y * (th + 1) + th, x * (tw + 1) : x * (tw + 1) + tw] = big
    return out


def render(store, out, **kw):
    """Render bare tiles (plain) unless ``plain=False``: these tests check the grid's pixels."""
    pick, color, style, rest = split({"plain": True, **kw})
    return dumpunet.render(store, pick, color, style, out=out, progress=False, **rest)


def test_grid_is_colorize_plus_tiling_of_every_channel(girl, tmp_path):
    store = dumpunet.open(girl)
    for spec, kw in [
        (ColorSpec(), {}),
        (ColorSpec("White/Black", "Sigmoid", gain=2.0, offset=0.5), {"method": "White/Black", "transform": "sigmoid", "gain": 2, "offset": 0.5}),
        (ColorSpec("Red/Blue", "Linear", clamp_min=-2, clamp_max=3), {"method": "red/blue", "transform": "linear", "clamp_min": -2, "clamp_max": 3}),
    ]:
        files = render(girl, tmp_path, blocks="IN04", steps="5", **kw)
        assert [f.path.name for f in files] == [f"IN04-step005-img0-cond-{spec.slug()}.png"]
        x = store.features("IN04", 5, guidance="cond")
        expected = by_hand(colorize(x, spec), cols=2, rows=3)  # the original's layout of 6 channels of 4x4
        got = pixels(files[0])
        assert got.shape == ((4 + 1) * 3 - 1, (4 + 1) * 2 - 1, *(() if spec.grayscale else (3,)))
        np.testing.assert_array_equal(got, expected)


def test_channels_images_guidance_and_scale(pair, tmp_path):
    store = dumpunet.open(pair)
    files = render(pair, tmp_path, blocks="IN00", steps="10", images="1", guidance="both", channels="1-3", scale=2)
    assert [f.path.name for f in files] == [
        f"IN00-step010-img1-uncond-ch1-3-x2-{DEFAULT_SLUG}.png",
        f"IN00-step010-img1-cond-ch1-3-x2-{DEFAULT_SLUG}.png",
    ]
    for f, g in zip(files, ("uncond", "cond")):
        x = store.features("IN00", 10, guidance=g, image=1)[1:4]
        np.testing.assert_array_equal(pixels(f), by_hand(colorize(x, ColorSpec()), cols=3, rows=1, scale=2))
        assert f.params["channels"] == "1-3" and f.params["grid"] == {"cols": 3, "rows": 1, "tile": [8, 8], "scale": 2, "gap": 1}


def test_every_selected_block_step_image_and_half_gets_one_file(pair, tmp_path):
    files = render(pair, tmp_path, blocks="IN00-OUT11(+12)", steps="1,20", guidance="both")
    names = [f.path.name for f in files]
    assert names == [
        f"{b}-step{s:03d}-img{i}-{g}-{DEFAULT_SLUG}.png"
        for s in (1, 20) for b in ("IN00", "M00", "OUT11") for i in (0, 1) for g in ("uncond", "cond")
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names + ["manifest.json"])


def test_manifest_lists_each_file_with_its_parameters(girl, tmp_path):
    files = render(girl, tmp_path, blocks="M00", steps="20", method="White/Black", transform="Sigmoid")
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["dumpunet"] == {"kind": "dumpunet-manifest", "version": 1, "writer": f"dumpunet {dumpunet.__version__}"}
    spec = ColorSpec("White/Black", "sigmoid")
    assert doc["files"] == [{
        "file": f"M00-step020-img0-cond-{spec.slug()}.png",
        "kind": "render",
        "store": str(girl.resolve()),
        "run": "main",
        "block": "M00",
        "which": "output",
        "step": 20,
        "call": 3,
        "timestep": 0.0,
        "image": 0,
        "guidance": "cond",
        "channels": "0-7",
        "grid": {"cols": 4, "rows": 2, "tile": [2, 2], "scale": 1, "gap": 1},
        "size": [11, 5],
        "mode": "L",
        "labels": False,
        "average": None,
        "colorization": {**json.loads(spec.to_json()), "slug": spec.slug()},
        "pca": None,
    }]
    assert files[0].params == doc["files"][0]
    assert pixels(files[0]).shape == (5, 11)


def test_repeated_renders_into_one_folder_accumulate_in_the_manifest(girl, tmp_path):
    for gain in (0.5, 1, 2):
        render(girl, tmp_path, blocks="OUT10-OUT11", steps="20", method="White/Black", transform="sigmoid", gain=gain)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    listed = [e["file"] for e in doc["files"]]
    assert len(listed) == 6 and listed == sorted(listed)
    assert {e["colorization"]["gain"] for e in doc["files"]} == {0.5, 1.0, 2.0}
    assert sorted(listed + ["manifest.json"]) == sorted(p.name for p in tmp_path.iterdir())
    # the same file again replaces its entry instead of duplicating it
    render(girl, tmp_path, blocks="OUT11", steps="20", method="White/Black", transform="sigmoid", gain=2)
    assert len(json.loads((tmp_path / "manifest.json").read_text())["files"]) == 6


def test_average_draws_one_map_per_block(girl, tmp_path):
    store = dumpunet.open(girl)
    for kind, slug in (("mean", "mean"), ("1-norm", "1norm"), ("2-norm", "2norm"), ("l2", "l2")):
        (f,) = render(girl, tmp_path, blocks="M00", steps="20", average=kind, scale=3)
        assert f.path.name == f"M00-step020-img0-cond-avg-{slug}-x3-{DEFAULT_SLUG}.png"
        avg = channel_average(store.features("M00", 20), kind)[None]
        np.testing.assert_array_equal(pixels(f), by_hand(colorize(avg, ColorSpec()), 1, 1, scale=3))
        assert f.params["average"] == kind and f.params["size"] == [6, 6]


def test_block_inputs(girl, tmp_path):
    (f,) = render(girl, tmp_path, blocks="OUT11", steps="1", which="input")
    assert f.path.name == f"OUT11-input-step001-img0-cond-{DEFAULT_SLUG}.png"
    x = dumpunet.open(girl).features("OUT11", 1, which="input")
    np.testing.assert_array_equal(pixels(f), by_hand(colorize(x, ColorSpec()), 2, 2))


def test_auto_scope_block_normalizes_all_tiles_by_one_range(girl, tmp_path):
    x = dumpunet.open(girl).features("IN00", 1)
    lo, hi = merge_ranges(map_ranges(x))
    assert map_ranges(x)[0, 1] < hi  # channel 0 spans less than the block: scopes must differ
    spec = ColorSpec("White/Black", "Auto [0,1]", auto_scope="block")
    (f,) = render(girl, tmp_path, blocks="IN00", steps="1", method="White/Black", auto_scope="block")
    assert f.path.name == f"IN00-step001-img0-cond-{spec.slug()}.png" and f.path.name.endswith("-wb-auto01-block.png")
    by_range = np.clip(((x.astype(np.float64).clip(lo, hi) - lo) / (hi - lo)) * 256, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels(f), by_hand(by_range, 2, 2))
    assert f.params["range"] == [lo, hi]
    (own,) = render(girl, tmp_path, blocks="IN00", steps="1", method="White/Black")
    assert not np.array_equal(pixels(own), pixels(f))


def test_auto_scope_step_and_run_share_one_range(girl, tmp_path):
    store = dumpunet.open(girl)
    blocks, steps = ["IN00", "M00", "OUT08"], [1, 20]
    per_step = {s: merge_ranges(*[map_ranges(store.features(b, s)) for b in blocks]) for s in steps}
    files = render(girl, tmp_path / "step", blocks="IN00,M00,OUT08", steps="1,20", auto_scope="step")
    for f in files:
        assert f.params["range"] == list(per_step[f.params["step"]])
        x = store.features(f.params["block"], f.params["step"])
        spec = ColorSpec(auto_scope="step")
        np.testing.assert_array_equal(
            pixels(f), by_hand(colorize(x, spec, minmax=per_step[f.params["step"]]), *{4: (2, 2), 8: (4, 2), 6: (2, 3)}[x.shape[0]])
        )
    run = merge_ranges(*per_step.values())
    files = render(girl, tmp_path / "run", blocks="IN00,M00,OUT08", steps="1,20", auto_scope="run")
    assert {tuple(f.params["range"]) for f in files} == {run}
    assert all(f.path.name.endswith("-auto01-run.png") for f in files)


def test_a_nan_expression_paints_black_instead_of_failing(girl, tmp_path):
    (f,) = render(girl, tmp_path, blocks="IN03", steps="5", space="rgb", r="0/(v-v)", g="0/(v-v)", b="(v-v)/0")
    assert pixels(f).max() == 0 and pixels(f).shape == (9, 9, 3)


def test_several_stores_go_to_subfolders_under_one_progress_bar(girl, pair, tmp_path, capsys):
    files = dumpunet.render([girl, pair], Pick(blocks="M00", steps="20"), out=tmp_path, jobs=2)
    assert sorted(str(f.path.relative_to(tmp_path)) for f in files) == sorted([
        f"girl/M00-step020-img0-cond-{DEFAULT_SLUG}.png",
        f"pair/M00-step020-img0-cond-{DEFAULT_SLUG}.png",
        f"pair/M00-step020-img1-cond-{DEFAULT_SLUG}.png",
    ])
    assert (tmp_path / "girl/manifest.json").exists() and (tmp_path / "pair/manifest.json").exists()
    err = capsys.readouterr().err
    assert "3/3" in err and "/1 " not in err and "/2 " not in err


def test_quiet_render_prints_nothing(girl, tmp_path, capsys):
    render(girl, tmp_path, blocks="M00", steps="20")
    assert capsys.readouterr() == ("", "")


ERRORS = [
    ({"blocks": "IN12"}, SpecError, "bad block spec: unknown block 'IN12' (this model has IN00..OUT11)\n  IN12\n  ^^^^"),
    ({"steps": "7"}, SelectionError, "step 7 was not recorded (recorded steps: 1,5,10,20)"),
    ({"steps": "21"}, SpecError, "bad step spec: step 21 out of range 1..20\n  21\n  ^^"),
    ({"blocks": "IN00", "channels": "2-4"}, SpecError, "bad channel spec for IN00: channel 4 out of range 0..3\n  2-4\n    ^"),
    ({"images": "0,2"}, SpecError, "bad image spec: image 2 out of range 0..1\n  0,2\n    ^"),
    ({"h": "(2+v"}, ExpressionError, "bad expression: H: '(' was never closed\n  (2+v\n  ^"),
    ({"method": "rainbow"}, DumpUnetError, "unknown colorize method 'rainbow' (valid: Custom, PCA, Red/Blue, White/Black)"),
    ({"average": "sum"}, OptionError, "unknown channel average 'sum' (valid: mean, 1-norm, 2-norm, l1, l2)"),
    ({"scale": 0}, OptionError, "scale must be a whole number from 1 to 64, got 0"),
    ({"scale": 65}, OptionError, "scale must be a whole number from 1 to 64, got 65"),
    ({"jobs": 0}, OptionError, "jobs must be a whole number of at least 1, got 0"),
    ({"guidance": "all"}, OptionError, "unknown guidance 'all' (valid: cond, uncond, both)"),
    ({"which": "input", "blocks": "IN00"}, SelectionError, "block IN00 has no recorded input in run 'main' (recorded: none)"),
    ({"method": "pca", "average": "mean"}, OptionError, "method pca colours the channel vectors; it cannot be combined with an average"),
    ({"run": "base"}, SelectionError, "no run 'base' in {store} (runs: main)"),
]


@pytest.mark.parametrize(("kw", "kind", "message"), ERRORS)
def test_mistakes_give_one_readable_error_and_write_nothing(pair, tmp_path, kw, kind, message):
    out = tmp_path / "renders"
    with pytest.raises(kind) as err:
        render(pair, out, **{"blocks": "M00", **kw})
    assert str(err.value) == message.format(store=pair)
    assert not out.exists()


def test_incomplete_step_of_a_killed_run(tmp_path):
    p = make_store(tmp_path / "killed.zarr")
    mark_interrupted(p, 20)
    with pytest.raises(IncompleteStepError) as err:
        render(p, tmp_path / "out", blocks="M00", steps="20")
    assert str(err.value) == "step 20 was not completely written (the recording was interrupted); complete steps: 1,5,10"
    assert [f.params["step"] for f in render(p, tmp_path / "out", blocks="M00")] == [1, 5, 10]


def test_foreign_newer_and_missing_stores_and_a_file_as_output(girl, tmp_path):
    foreign = tmp_path / "foreign.zarr"
    import zarr

    zarr.open_group(foreign, mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="is a zarr store but not a dumpunet store"):
        render(foreign, tmp_path / "o")
    newer = tmp_path / "newer.zarr"
    shutil.copytree(girl, newer)
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["dumpunet"]["format_version"] += 1
    (newer / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"newer than this dumpunet reads \(version 1\)"):
        render(newer, tmp_path / "o")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError) as err:
        render(girl, tmp_path / "afile", blocks="M00", steps="20")
    assert str(err.value) == f"output folder {tmp_path / 'afile'} is a file; choose a folder for --out"
    assert (tmp_path / "afile").read_text() == "x"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_failure_mid_render_leaves_whole_files_and_a_manifest_of_exactly_them(girl, tmp_path, monkeypatch, failure):
    real = render_module.encode_png
    calls = {"n": 0}

    def flaky(image, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise failure
        return real(image, **kw)

    monkeypatch.setattr(render_module, "encode_png", flaky)
    with pytest.raises(type(failure)):
        dumpunet.render(girl, Pick(blocks="IN00-IN11", steps="1"), out=tmp_path, jobs=1, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]
    pngs = [n for n in names if n.endswith(".png")]
    assert 3 <= len(pngs) < 12
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["file"] for e in doc["files"]] == pngs
    for n in pngs:
        assert pixels(tmp_path / n).ndim == 3


def test_a_write_that_fails_halfway_leaves_no_file(tmp_path):
    from dumpunet.analyzer.output import write_atomic

    def half(fh):
        fh.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(tmp_path / "a.png", half)
    assert list(tmp_path.iterdir()) == []


def test_a_foreign_manifest_is_not_overwritten(girl, tmp_path):
    (tmp_path / "manifest.json").write_text('{"mine": true}')
    with pytest.raises(OutputError) as err:
        render(girl, tmp_path, blocks="M00", steps="20")
    assert str(err.value) == f"{tmp_path / 'manifest.json'} exists but is not a dumpunet manifest; choose another output folder"
    assert (tmp_path / "manifest.json").read_text() == '{"mine": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]



def test_two_stores_with_one_name_are_refused(girl, tmp_path):
    copy = tmp_path / "copy" / "girl.zarr"
    shutil.copytree(girl, copy)
    with pytest.raises(OptionError) as err:
        render([girl, copy], tmp_path / "out", blocks="M00", steps="20")
    assert str(err.value) == (
        f"stores {girl} and {copy} would both render into {tmp_path / 'out' / 'girl'}; rename one or render them separately"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw", [
    {},
    {"method": "White/Black", "transform": "sigmoid", "gain": 2, "scale": 2},
    {"method": "Red/Blue", "auto_scope": "block", "channels": "1-3", "guidance": "uncond"},
    {"auto_scope": "run", "average": "2-norm", "which": "input"},
    {"method": "pca"},
    {"method": "Red/Blue", "plain": True},
])
def test_render_image_is_the_png_render_writes(girl, tmp_path, kw):
    pick, color, style, _ = split({"blocks": "OUT08", "steps": "10", **kw})
    (f,) = dumpunet.render(girl, pick, color, style, out=tmp_path, progress=False)
    with Image.open(f.path) as im:
        want = np.asarray(im.convert("RGB"))
    got = dumpunet.render_image(dumpunet.open(girl), pick, color, style)
    assert got.dtype == np.uint8 and got.shape == (*want.shape[:2], 3)
    np.testing.assert_array_equal(got, want)


def test_render_image_draws_exactly_one_grid(pair):
    with pytest.raises(SelectionError) as err:
        dumpunet.render_image(pair, Pick(blocks="M00,OUT11", steps="20"))
    assert str(err.value) == (
        "render_image draws one grid, but the pick selects 4 (2 blocks x 1 steps x 2 images x 1 guidance halves); "
        "narrow blocks, steps, images or guidance"
    )
    img = dumpunet.render_image(pair, Pick(blocks="M00", steps="20", images="1"), style=GridStyle(scale=2, plain=True))
    x = dumpunet.open(pair).features("M00", 20, image=1)
    cols, rows = grid_shape(8, 2, 2)
    np.testing.assert_array_equal(img, by_hand(colorize(x, ColorSpec()), cols, rows, scale=2))

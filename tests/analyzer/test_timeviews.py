"""render --animate and --mosaic: frames and cells are the single-step renders, pixel for pixel."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageSequence
from synthetic_stores import RECORDED_STEPS, SHAPES
from test_render import pixels

import dumpunet
from dumpunet import ColorSpec, GridStyle, Pick
from dumpunet.analyzer.timeviews import MOSAIC_TILE
from dumpunet.cli import main
from dumpunet.errors import OptionError


def frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]


def rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("color", [ColorSpec(auto_scope="run"), ColorSpec("White/Black", "sigmoid", gain=1.5)],
                         ids=["hsl-run", "gray-sigmoid"])
def test_an_animated_png_has_one_frame_per_step_equal_to_the_single_step_renders(girl, tmp_path, color):
    pick = Pick(blocks="OUT11")
    singles = dumpunet.render(girl, pick, color, out=tmp_path / "single", progress=False)
    (anim,) = dumpunet.render(girl, pick, color, out=tmp_path / "anim", progress=False, animate="png", frame_ms=120)
    assert anim.path.name == f"OUT11-steps1_5_10_20-img0-cond-{color.slug()}.png"
    got = frames(anim)
    assert len(got) == len(RECORDED_STEPS) == anim.params["frames"] and anim.params["steps"] == list(RECORDED_STEPS)
    with Image.open(anim.path) as im:
        assert im.is_animated and im.info["loop"] == 0 and im.info["duration"] == 120
    for frame, single in zip(got, sorted(singles, key=lambda f: f.params["step"]), strict=True):
        want = rgb(single)
        h, w = want.shape[:2]
        np.testing.assert_array_equal(frame[:h, :w], want)
        assert not frame[h:].any() and not frame[:, w:].any()  # a smaller frame sits on black
    assert anim.params["kind"] == "render-animation" and anim.params["size"] == [got[0].shape[1], got[0].shape[0]]
    doc = json.loads((tmp_path / "anim" / "manifest.json").read_text())
    assert [e["file"] for e in doc["files"]] == [anim.path.name]


def test_a_gif_animation_loops_over_the_steps(girl, tmp_path):
    files = dumpunet.render(girl, Pick(blocks="M00,OUT11", steps="5,20"), ColorSpec("White/Black", "sigmoid"),
                            out=tmp_path, progress=False, animate="gif")
    assert [f.path.name for f in files] == [f"{b}-steps5_20-img0-cond-wb-sigmoid-g1-o0.gif" for b in ("M00", "OUT11")]
    with Image.open(files[0].path) as im:
        assert im.format == "GIF" and im.n_frames == 2 and im.info["duration"] == 250
    # gray frames survive a palette exactly
    single = dumpunet.render(girl, Pick(blocks="M00", steps="20"), ColorSpec("White/Black", "sigmoid"),
                             out=tmp_path / "single", progress=False)[0]
    want = rgb(single)
    np.testing.assert_array_equal(frames(files[0].path)[1][: want.shape[0], : want.shape[1]], want)


def test_a_mosaic_puts_each_blocks_bare_grid_at_its_row_and_step_column(girl, tmp_path):
    pick = Pick(blocks="IN03,M00,OUT11", steps="1,20")
    (mosaic,) = dumpunet.render(girl, pick, ColorSpec(), GridStyle(average="mean"), out=tmp_path, progress=False,
                                mosaic=True)
    assert mosaic.path.name == "mosaic-steps1_20-img0-cond-avg-mean-hsl-auto01.png"
    img = pixels(mosaic)
    cells = mosaic.params["cells"]
    assert [(c["block"], c["step"]) for c in cells] == [(b, s) for b in ("IN03", "M00", "OUT11") for s in (1, 20)]
    ys = {c["block"]: c["box"][1] for c in cells}
    xs = {c["step"]: c["box"][0] for c in cells}
    assert ys["IN03"] < ys["M00"] < ys["OUT11"] and xs[1] < xs[20]  # U-Net order down, steps across
    for c in cells:
        h, w = SHAPES[c["block"]][1:]
        k = max(1, math.ceil(MOSAIC_TILE / min(h, w)))
        single = dumpunet.render_image(girl, Pick(blocks=c["block"], steps=str(c["step"])), ColorSpec(),
                                       GridStyle(average="mean", plain=True, scale=k))
        x, y, cw, ch = c["box"]
        assert (ch, cw) == single.shape[:2] == (h * k, w * k)
        np.testing.assert_array_equal(img[y : y + ch, x : x + cw], single)
    assert mosaic.params["kind"] == "render-mosaic" and mosaic.params["steps"] == [1, 20]


def test_time_views_refuse_what_does_not_go_together(girl, tmp_path):
    with pytest.raises(OptionError, match="animate and mosaic are two ways to show the steps: choose one"):
        dumpunet.render(girl, Pick(blocks="M00"), out=tmp_path / "x", animate="png", mosaic=True, progress=False)
    with pytest.raises(OptionError, match=r"unknown animation format 'mp4' \(valid: png, gif\)"):
        dumpunet.render(girl, Pick(blocks="M00"), out=tmp_path / "x", animate="mp4", progress=False)
    assert not (tmp_path / "x").exists()
    res = CliRunner().invoke(main, ["render", str(girl), "--blocks", "M00", "--animate", "png", "--frame-ms", "5",
                                    "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "--frame-ms" in res.output


def test_the_cli_writes_an_animation(girl, tmp_path):
    res = CliRunner().invoke(main, ["render", str(girl), "--blocks", "OUT11", "--steps", "1,5", "--auto-scope", "run",
                                    "--animate", "png", "--out", str(tmp_path), "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(res.stdout)
    assert entry["file"] == "OUT11-steps1_5-img0-cond-hsl-auto01-run.png" and entry["frames"] == 2
    assert len(frames(tmp_path / entry["file"])) == 2

"""Render and diff grids are labelled and legible by default; --plain gives the bare tiles.

The expected text is drawn here with Pillow's default font directly (not through dumpunet's
label helpers), the expected ranges are taken from the raw arrays with numpy, and the bare grid
is laid out by hand, so each test fails if the labels, the range or the scale are wrong.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont
from synthetic_stores import make_paired_store
from test_render import by_hand, pixels

import dumpunet
from dumpunet import ColorSpec, GridStyle, Pick
from dumpunet.analyzer.color.colorize import colorize
from dumpunet.analyzer.grid import grid_shape
from dumpunet.analyzer.png import encode_png
from dumpunet.cli import main
from dumpunet.errors import OptionError


def text(line: str, pad: int = 2) -> np.ndarray:
    """White text on black, as Pillow's default font at 11 px draws it with each space doubled
    (its own space is 2 px wide: too narrow to part a number from the next word)."""
    font = ImageFont.load_default(size=11)
    line = line.replace(" ", "  ")
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), line, font=font)
    img = Image.new("L", (right - min(0, left) + 2 * pad, bottom - min(0, top) + 2 * pad), 0)
    ImageDraw.Draw(img).text((pad, pad), line, fill=255, font=font)
    return np.asarray(img)


def find(image: np.ndarray, part: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where ``part`` lies in ``image`` exactly."""
    h, w = part.shape[:2]
    hits = []
    for y in range(image.shape[0] - h + 1):
        for x in range(image.shape[1] - w + 1):
            if np.array_equal(image[y : y + h, x : x + w], part):
                hits.append((y, x))
    return hits


def _greedy(parts: list[str], sep: str, width: int) -> list[str]:
    lines = [parts[0]]
    for part in parts[1:]:
        if text(lines[-1] + sep + part).shape[1] <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return lines


def assert_title(img: np.ndarray, lines: list[str]) -> int:
    """The title strip holds ``lines`` wrapped to the picture's width (fields joined by " | " while
    they fit, else words), each line at the left edge under the one before; return their height."""
    width, y = img.shape[1], 0
    for line in lines:
        for part in _greedy(line.split(" | "), " | ", width):
            for row in (_greedy(part.split(" "), " ", width) if text(part).shape[1] > width else [part]):
                t = text(row)
                np.testing.assert_array_equal(img[y : y + t.shape[0], : t.shape[1]], t, err_msg=row)
                y += t.shape[0]
    return y


def render(store, out, **kw):
    pick = Pick(**{k: kw.pop(k) for k in ("blocks", "steps", "images", "channels", "which") if k in kw})
    style = GridStyle(**{k: kw.pop(k) for k in ("scale", "average", "plain") if k in kw})
    (f,) = dumpunet.render(store, pick, ColorSpec(**kw), style, out=out, progress=False)
    return f


def test_the_title_strip_states_store_run_block_step_image_half_and_colorization(girl, tmp_path):
    f = render(girl, tmp_path, blocks="M00", steps="20", method="White/Black", transform="sigmoid")
    img = pixels(f)
    assert_title(img, ["girl | run main | M00 (unet.m00) | step 20 (t=0) | image 0 | cond",
                       "channels 0-7 | x32 | White/Black, Sigmoid gain 1 offset 0"])
    assert f.params["labels"] is True and f.params["size"] == [img.shape[1], img.shape[0]]


def test_block_inputs_and_averages_say_so_in_the_title(girl, tmp_path):
    f = render(girl, tmp_path, blocks="OUT11", steps="1", which="input", average="2-norm", auto_scope="block")
    img = np.asarray(Image.open(f.path).convert("L"))
    step1 = dumpunet.open(girl).run().calls.timestep[f.params["call"]]
    k, channels = f.params["grid"]["scale"], f.params["channels"]
    assert_title(img, [f"girl | run main | OUT11 input (unet.out11) | step 1 (t={float(step1):g}) | image 0 | cond",
                       f"2-norm over channels {channels} | x{k} | Custom HSL h=(2+v)/3 s=1.0 l=0.5, Auto [0,1] over the grid"])


def test_a_narrow_grid_wraps_its_title_instead_of_widening(girl, tmp_path):
    # OUT11: 4 channels of 8x8 at x8 make a 2x2 grid of 129 pixels; its title is three times as wide.
    f = render(girl, tmp_path, blocks="OUT11", steps="20", method="White/Black", transform="sigmoid", gain=1.5)
    img = pixels(f)
    g = f.params["grid"]
    grid_w = g["cols"] * (g["tile"][1] * g["scale"] + 1) - 1
    bar = text(f"{f.params['colorbar']['min']:.4g}").shape[1] + 256 + text(f"{f.params['colorbar']['max']:.4g}").shape[1] + 8
    assert img.shape[1] == max(grid_w, bar, 240) < text("girl | run main | OUT11 (unet.out11) | step 20 (t=0)").shape[1] * 2
    lines = ["girl | run main | OUT11 (unet.out11) | step 20 (t=0) | image 0 | cond",
             f"channels 0-3 | x{g['scale']} | White/Black, Sigmoid gain 1.5 offset 0"]
    assert text(lines[0]).shape[1] > img.shape[1]  # so it does wrap
    top = assert_title(img, lines)
    # the grid starts below the title: its first tile row at the left edge (channel 0's number on it)
    assert img[top + 4 : top + 4 + g["tile"][0] * g["scale"], grid_w].max() == 0  # the black margin right of the grid


def word_gaps(glyphs: np.ndarray) -> list[int]:
    """The widths of the runs of empty columns between the first and the last inked column."""
    ink = glyphs.any(axis=0)
    cols = np.nonzero(ink)[0]
    gaps, run = [], 0
    for inked in ink[cols[0] : cols[-1] + 1]:
        if inked:
            gaps, run = gaps + [run] if run else gaps, 0
        else:
            run += 1
    return gaps


def test_a_space_parts_a_number_from_the_next_word():
    # the attention legend read "h0 0.005524to 0.01234": a 2 px space after a digit looked like none
    from dumpunet.analyzer.labels import MIN_SPACE, text_image

    for line in ("h0 0.005524 to 0.01234", "-0.5 to 2 | x8 | Red/Blue"):
        gaps = word_gaps(text_image(line))
        assert sum(g >= MIN_SPACE - 1 for g in gaps) == line.count(" "), (line, gaps)  # one wide gap per space
        assert sorted(gaps)[-line.count(" ")] >= 3  # and none of them narrow
    assert MIN_SPACE >= 4


def test_each_tile_carries_its_channel_number(girl, tmp_path):
    f = render(girl, tmp_path, blocks="OUT03", steps="1", channels="3,5,7", method="White/Black")
    img = pixels(f)
    assert f.params["grid"]["scale"] == 16 and f.params["grid"]["cols"] == 3  # 4x4 maps become 64x64 tiles
    hits = {n: find(img, text(str(n), pad=1)) for n in (3, 5, 7)}
    rows = {y for y, x in hits[3] if x == 0} & {y for y, x in hits[5] if x == 65} & {y for y, x in hits[7] if x == 130}
    assert len(rows) == 1  # each number at the top left of its tile, tiles 64 px + a 1-px gap apart


def test_auto_upscale_makes_small_maps_64_pixels_and_an_explicit_scale_wins(girl, tmp_path):
    x = dumpunet.open(girl).features("M00", 20)  # 8 channels of 2x2
    f = render(girl, tmp_path / "auto", blocks="M00", steps="20", average="mean", method="White/Black",
               transform="linear")
    assert f.params["grid"]["tile"] == [2, 2] and f.params["grid"]["scale"] == 32
    mean = x.astype(np.float32).mean(axis=0, dtype=np.float64).astype(np.float32)[None]
    tile = by_hand(colorize(mean, ColorSpec("White/Black", "linear")), 1, 1, scale=32)
    assert tile.shape == (64, 64)
    assert len(find(pixels(f), tile)) == 1  # the map, enlarged by pixel repetition (nearest neighbour)
    one = render(girl, tmp_path / "one", blocks="M00", steps="20", average="mean", method="White/Black",
                 transform="linear", scale=1)
    assert one.params["grid"]["scale"] == 1 and one.path.name.endswith("-x1.png") is False
    assert find(pixels(one), by_hand(colorize(mean, ColorSpec("White/Black", "linear")), 1, 1)) != []
    big = render(girl, tmp_path / "one", blocks="OUT11", steps="20")  # 8x8 maps: 8 times
    assert big.params["grid"]["scale"] == 8


def test_the_colour_bar_records_the_range_its_colours_mean(girl, tmp_path):
    store = dumpunet.open(girl)
    x = store.features("IN04", 5).astype(np.float32)
    block = render(girl, tmp_path / "b", blocks="IN04", steps="5", auto_scope="block")
    assert block.params["colorbar"] == {"min": float(x.min()), "max": float(x.max()), "spans": "grid"}
    assert block.params["range"] == [float(x.min()), float(x.max())]
    step = dumpunet.render(girl, Pick(blocks="IN04,OUT11", steps="5"), ColorSpec(auto_scope="step"),
                           out=tmp_path / "s", progress=False)
    both = np.concatenate([store.features(b, 5).astype(np.float32).ravel() for b in ("IN04", "OUT11")])
    for f in step:
        assert f.params["colorbar"] == {"min": float(both.min()), "max": float(both.max()), "spans": "step"}
    tiles = render(girl, tmp_path / "c", blocks="IN04", steps="5")
    assert tiles.params["colorbar"] == {"min": None, "max": None, "spans": "tile"}
    linear = render(girl, tmp_path / "l", blocks="IN04", steps="5", transform="linear", clamp_min=-3, clamp_max=2)
    assert linear.params["colorbar"] == {"min": -3.0, "max": 2.0, "spans": "fixed"}
    sigmoid = render(girl, tmp_path / "g", blocks="IN04", steps="5", transform="sigmoid", gain=2, offset=1)
    assert sigmoid.params["colorbar"] == {"min": -3.0, "max": 1.0, "spans": "fixed"}
    pca = render(girl, tmp_path / "p", blocks="IN04", steps="5", method="pca")
    assert "colorbar" in pca.params and pca.params["colorbar"] is None


def test_the_colour_bar_runs_from_black_to_white_between_its_written_ends(girl, tmp_path):
    store = dumpunet.open(girl)
    x = store.features("IN04", 5).astype(np.float32)
    f = render(girl, tmp_path, blocks="IN04", steps="5", method="White/Black", auto_scope="block")
    img = pixels(f)
    lo, hi = text(f"{float(x.min()):.4g}"), text(f"{float(x.max()):.4g}")
    ((y, x0),) = find(img, lo)
    ((y2, x1),) = find(img, hi)
    assert y == y2 and x0 == 0 and x1 > x0 + lo.shape[1]
    row = img[y + 2, x0 + lo.shape[1] : x1]
    bar = row[row > 0]
    assert bar[0] <= 4 and bar[-1] == 255 and np.all(np.diff(bar.astype(int)) >= 0)


def test_plain_is_the_bare_grid_byte_for_byte(girl, tmp_path):
    r = CliRunner().invoke(main, ["render", str(girl), "--blocks", "IN00", "--steps", "1", "--plain",
                                  "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(r.stdout)
    x = dumpunet.open(girl).features("IN00", 1)
    cols, rows = grid_shape(x.shape[0], *x.shape[1:])
    bare = by_hand(colorize(x, ColorSpec()), cols, rows)
    assert entry["labels"] is False and "colorbar" not in entry and entry["size"] == [bare.shape[1], bare.shape[0]]
    assert (tmp_path / entry["file"]).read_bytes() == encode_png(bare)
    labelled = render(girl, tmp_path / "l", blocks="IN00", steps="1")
    assert labelled.path.name == entry["file"]
    assert pixels(labelled).shape[0] > bare.shape[0] * 8


def test_render_image_is_labelled_by_default_and_plain_on_request(girl):
    pick = Pick(blocks="M00", steps="20")
    plain = dumpunet.render_image(girl, pick, style=GridStyle(plain=True))
    labelled = dumpunet.render_image(girl, pick)
    x = dumpunet.open(girl).features("M00", 20)
    np.testing.assert_array_equal(plain, by_hand(colorize(x, ColorSpec()), *grid_shape(8, 2, 2)))
    top = text("girl | run main | M00 (unet.m00) | step 20 (t=0) | image 0 | cond")
    np.testing.assert_array_equal(labelled[: top.shape[0], : top.shape[1], 0], top)


def test_diff_grids_name_both_runs(tmp_path):
    paired = make_paired_store(tmp_path / "girl.zarr", n_images=1)
    files = dumpunet.diff(paired, Pick(blocks="M00", steps="10"), out=tmp_path / "d", finals=False, progress=False)
    (m,) = [f for f in files if f.path.name.startswith("diff-M00")]
    img = np.asarray(Image.open(m.path).convert("L"))
    t = dumpunet.open(paired).run("layered").calls.timestep[m.params["call"]]
    assert_title(img, [f"girl | diff layered - base | M00 (unet.m00) | step 10 (t={float(t):g}) | image 0 | cond"])
    # The default diff colours span the grid's largest |difference| both ways (the bar says so).
    st = dumpunet.open(paired)
    d = st.features("M00", 10, run="layered").astype(np.float32) - st.features("M00", 10, run="base").astype(np.float32)
    top_abs = float(np.abs(d).max())
    assert m.params["colorbar"] == {"min": -top_abs, "max": top_abs, "spans": "grid"}
    assert m.params["range"] == [float(d.min()), float(d.max())]
    # the bar under the grid: full blue at -m, full red at +m, near white at its middle (0)
    rgb = np.asarray(Image.open(m.path).convert("RGB"))
    bar_rows = [y for y in range(rgb.shape[0] - 20, rgb.shape[0]) if (rgb[y] == (0, 0, 255)).all(axis=1).any()]
    assert bar_rows and all((rgb[y] == (255, 0, 0)).all(axis=1).any() for y in bar_rows)
    row = rgb[bar_rows[0]]
    blue, red = np.flatnonzero((row == (0, 0, 255)).all(axis=1))[0], np.flatnonzero((row == (255, 0, 0)).all(axis=1))[-1]
    assert red - blue == 255 and row[(blue + red) // 2].min() >= 250


def test_plain_must_be_a_bool():
    with pytest.raises(OptionError, match="plain must be True or False, got 'yes'"):
        GridStyle(plain="yes")

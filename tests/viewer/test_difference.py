"""The viewer's differences: two stores (``minus``: A - B) and the summary chart of ``diff``.

Two tiny-sd1 recordings with different seeds and prompts, and one at another size (another
block layout). Expected pictures are computed here from the arrays the reader returns, with the
plain-numpy references of tests/analyzer/reference.py, not with the analyzer's diff code.
"""

from __future__ import annotations

import json
import math
import shlex

import numpy as np
import pytest
import reference
from click.testing import CliRunner
from test_server import cli_picture, get, pixels

from dumpunet.analyzer.color.spec import DIFF_COLOR, ColorSpec
from dumpunet.cli import main
from dumpunet.viewer.server import start

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import dumpunet  # noqa: E402
from dumpunet.analyzer.colormaps import colormap  # noqa: E402
from dumpunet.analyzer.step_table import CELL  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.recorder

STEPS = 3


def record(path, *, seed: int, prompt: str, size: int = 64):
    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.set_progress_bar_config(disable=True)
    with dumpunet.record(pipe, path, progress=False):
        pipe(prompt=prompt, negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=7.0, height=size,
             width=size, generator=torch.Generator().manual_seed(seed), output_type="np")
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("difference")
    return [record(root / "a.zarr", seed=1, prompt="a cute girl, pink hair"),
            record(root / "b.zarr", seed=2, prompt="a red car on a road"),
            record(root / "small.zarr", seed=1, prompt="a cute girl, pink hair", size=32)]


@pytest.fixture(scope="module")
def served(recorded):
    srv = start(recorded)
    yield srv
    srv.stop()


def raw(path, block: str, step: int, guidance: str = "cond") -> np.ndarray:
    return dumpunet.open(path).features(block, step=step, guidance=guidance)


def coloured(d: np.ndarray, spec: ColorSpec) -> np.ndarray:
    """The tiles of ``d`` [C, H, W] coloured by ``spec``: an Auto range per tile, or (scope block) one over them all."""
    whole = None if spec.auto_scope == "channel" else np.tile([np.nanmin(d), np.nanmax(d)], (len(d), 1))
    return reference.colorize(d, spec, whole)


@pytest.mark.parametrize("query, spec", [
    ("block=OUT11&step=2&method=Red/Blue&transform=linear", ColorSpec("Red/Blue", "linear")),
    ("block=IN04&step=3&guidance=uncond&transform=auto01&space=hsl&auto_scope=channel", ColorSpec()),  # per tile
    ("block=OUT11&step=1", DIFF_COLOR),  # by default diff's blue-white-red over the grid's [-m, m]
])
def test_a_minus_b_grid_is_the_coloured_difference_of_the_raw_arrays(served, recorded, tmp_path, query, spec):
    status, headers, body = get(served, f"api/image?{query}&minus=1")
    assert status == 200, body
    params = dict(p.split("=") for p in query.split("&"))
    guidance = params.get("guidance", "cond")
    a, b = (raw(p, params["block"], int(params["step"]), guidance) for p in recorded[:2])
    d = reference.diff(a, b)
    assert np.abs(d).max() > 0.01  # different seeds and prompts: a real difference
    cols, rows, th, tw = map(int, headers["X-Grid"].split(","))
    assert (th, tw) == d.shape[1:] and cols * rows >= d.shape[0]
    expected = reference.tile(coloured(d, spec), cols, rows)
    assert np.array_equal(pixels(body), expected)
    # A alone is another picture; A - B is what `diff A B` writes
    assert not np.array_equal(pixels(get(served, f"api/image?{query}")[2]), expected)
    command = json.loads(get(served, f"api/command?{query}&minus=1")[2])["command"]
    assert command.startswith(f"dumpunet diff {recorded[0]} {recorded[1]} ")
    assert np.array_equal(cli_picture(command, tmp_path, "diff-"), expected)
    # and the other way round is B - A
    back = pixels(get(served, f"api/image?{query.replace('block', 'store=1&block')}&minus=0")[2])
    assert np.array_equal(back, reference.tile(coloured(reference.diff(b, a), spec), cols, rows))


@pytest.mark.parametrize("query, prefix", [
    ("view=attention&step=2&head=mean", "diff-"),
    ("view=heatmap&token=2&step=2", "diff-heatmap"),
])
def test_a_minus_b_attention_and_word_heatmap_are_what_their_commands_write(served, recorded, tmp_path, query, prefix):
    status, _, body = get(served, f"api/image?{query}&minus=1")
    assert status == 200, body
    command = json.loads(get(served, f"api/command?{query}&minus=1")[2])["command"]
    assert command.split()[1:4] == [query.split("&")[0][len("view="):], str(recorded[0]), str(recorded[1])]
    assert np.array_equal(pixels(body), cli_picture(command, tmp_path, prefix))
    assert body != get(served, f"api/image?{query}")[2]  # A alone is another picture


def test_a_minus_b_channel_average_and_final_image(served, recorded):
    status, _, body = get(served, "api/image?block=M00&step=1&average=2-norm&method=White/Black&transform=auto01&minus=1")
    assert status == 200, body
    d = reference.diff(raw(recorded[0], "M00", 1), raw(recorded[1], "M00", 1))
    expected = reference.colorize(reference.channel_reduce(d, "2-norm")[None], ColorSpec("White/Black"))[0]
    assert np.array_equal(pixels(body)[..., 0], expected)
    status, _, body = get(served, "api/image?view=final&minus=1")
    assert status == 200, body
    a, b = (dumpunet.open(p).image(0).astype(np.int64) for p in recorded[:2])
    d = np.abs(a - b)
    stretched = np.floor(d * 255 / d.max() + 0.5).astype(np.uint8)  # the largest difference is white
    assert d.max() > 0 and np.array_equal(pixels(body), stretched)


def test_a_minus_b_summary_numbers_are_the_raw_arrays(served, recorded):
    status, _, body = get(served, "api/summary?minus=1&step=2")
    assert status == 200, body
    rows = json.loads(body)["rows"]
    blocks = dumpunet.open(recorded[0]).blocks
    assert [(r["block"], r["step"]) for r in rows] == [(b, s) for b in blocks for s in (1, 2)]
    for row in rows:
        a, b = (raw(p, row["block"], row["step"]) for p in recorded[:2])
        mad = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())
        base = float(np.abs(b.astype(np.float64)).mean())
        assert row["mean_abs_diff"] == pytest.approx(mad, rel=1e-6)
        assert row["base_mean_abs"] == pytest.approx(base, rel=1e-9)
        assert row["relative"] == pytest.approx(mad / base, rel=1e-6)
    status, headers, chart = get(served, "api/image?view=summary&minus=1&step=2")
    assert status == 200 and headers["Content-Type"] == "image/png"
    img = pixels(chart)  # the block x step heatmap: each row's cell in the colour of its relative change
    top = max(r["relative"] for r in rows)
    for row in rows:
        assert (img[..., :3] == colormap(np.array(row["relative"] / top))).all(axis=2).sum() >= CELL[0] * CELL[1]


@pytest.mark.parametrize("query, message", [
    ("minus=2", ("a.zarr and small.zarr have different U-Net layouts: block IN00 is 8x8x8 in a.zarr but 8x4x4 in "
                 "small.zarr; a difference needs two recordings of one model at one size")),
    ("minus=2&view=summary", "a.zarr and small.zarr have different U-Net layouts"),
    ("minus=2&view=attention", "a.zarr and small.zarr have different U-Net layouts"),
    ("minus=2&view=heatmap&token=2", "a.zarr and small.zarr have different U-Net layouts"),
    ("minus=0", "minus names the shown store itself (0); choose another store"),
    ("view=summary", "the summary chart compares two runs: choose a pair, or another store to subtract"),
])
def test_what_cannot_be_subtracted_says_why(served, query, message):
    status, _, body = get(served, "api/image?" + query)
    assert status == 400 and json.loads(body)["error"].startswith(message)


def test_a_missing_store_to_subtract_is_not_found(served):
    assert get(served, "api/image?minus=3")[0] == 404


def test_the_summary_chart_of_a_pair_is_diffs_summary_png(server, tmp_path):
    query = "store=1&pair=layered&view=summary&step=10&guidance=uncond"
    status, _, body = get(server, "api/image?" + query)
    assert status == 200, body
    cmd = json.loads(get(server, "api/command?" + query)[2])
    assert cmd["command"].startswith("dumpunet diff ") and "--steps 1,5,10 " in cmd["command"]
    assert cmd["file"] == "pair-summary-blocks-step010-img0-uncond.png"
    args = shlex.split(cmd["command"])
    args[args.index("--out") + 1] = str(tmp_path / "cli")
    result = CliRunner().invoke(main, [*args[1:], "--quiet"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(pixels(body), pixels((tmp_path / "cli" / "summary.png").read_bytes()))
    # one chart in every mode of the pair, whatever the colours or block; the numbers are summary.csv's
    again = get(server, "api/image?" + query + "&mode=base&method=Red/Blue&block=IN04&channel=2")
    assert again[1]["X-Cache"] == "hit" and again[2] == body
    rows = json.loads(get(server, "api/summary?" + query)[2])["rows"]
    assert {r["step"] for r in rows} == {1, 5, 10} and all(math.isfinite(r["relative"]) for r in rows)

"""The difference of two runs' attention (attention --pair, attention A B) and of their word heatmaps.

Expected values are computed here from the arrays the reader returns, with the plain-numpy
references of reference.py and Pillow's bicubic resize (the heatmap's documented upsampling),
not with the analyzer's code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import reference
from click.testing import CliRunner
from PIL import Image
from synthetic_stores import make_store
from viewer_stores import HEADS, SIZE, make_attention_store

import dumpunet
from dumpunet import Pick
from dumpunet.analyzer.attention_diff import compare_runs
from dumpunet.analyzer.attention_grids import attention_grid
from dumpunet.analyzer.color.spec import DIFF_COLOR, ColorSpec
from dumpunet.analyzer.heatmap import heatmap_difference
from dumpunet.cli import main
from dumpunet.errors import OptionError, SelectionError

PROMPT = list(range(1, 6))  # the prompt's tokens: a pink h air girl (not <start>, <end>)
ONE = {"images": "0", "guidance": "cond"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention-diff")
    return {"pair": make_attention_store(root / "pair.zarr", pair=True), "a": make_attention_store(root / "a.zarr"),
            "b": make_attention_store(root / "b.zarr", seed=5),
            "short": make_attention_store(root / "short.zarr", seed=5, steps=(1, 2)),
            "blocks": make_store(root / "blocks.zarr")}  # the same blocks, no attention


def raw(path, run: str, layer: str, step: int) -> np.ndarray:
    return dumpunet.open(path).run(run).attention(layer, step, guidance="cond").astype(np.float32)


def heads_by_tokens(d: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """[head, query, token] -> the grid's tiles [head * token, h, w] (row h, column t)."""
    return d[:, :, PROMPT].transpose(0, 2, 1).reshape(d.shape[0] * len(PROMPT), *hw)


def test_a_pairs_attention_difference_is_layered_minus_base_of_the_raw_arrays(stores):
    spec = ColorSpec("Red/Blue", "linear", clamp_min=-0.3, clamp_max=0.3)
    picture = attention_grid(stores["pair"], Pick(blocks="IN01.attn2", steps="2", **ONE), spec, pair="layered")
    d = reference.diff(raw(stores["pair"], "layered", "IN01.attn2", 2), raw(stores["pair"], "base", "IN01.attn2", 2))
    assert np.abs(d).max() > 0.05  # other seeds: a real difference
    tiles = reference.tile(reference.colorize(heads_by_tokens(d, (8, 8)), spec), len(PROMPT), HEADS, scale=4)
    assert np.array_equal(picture[-tiles.shape[0]:, -tiles.shape[1]:], tiles)  # below and beside the headers
    layered = attention_grid(stores["pair"], Pick(run="layered", blocks="IN01.attn2", steps="2", **ONE), spec)
    assert not np.array_equal(layered[-tiles.shape[0]:, -tiles.shape[1]:], tiles)  # the layered run alone differs
    # one head: its row alone; heads are chosen before the difference is drawn
    one = attention_grid(stores["pair"], Pick(blocks="IN01.attn2", steps="2", **ONE), spec, pair="layered", heads="1")
    assert np.array_equal(one[-(tiles.shape[0] // 2):, -tiles.shape[1]:], tiles[-(tiles.shape[0] // 2):])


def test_two_stores_difference_through_the_cli(stores, tmp_path):
    out = tmp_path / "ab"
    result = CliRunner().invoke(main, ["attention", str(stores["a"]), str(stores["b"]), "--layers", "M00",
                                       "--steps", "3", "--aggregate", "resolution", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    (npy,) = out.glob("*.npy")
    assert npy.name == "diff-res2x2-step003-img0-cond-qk-aggregate-bwr-autosym-block.npy"
    d = reference.diff(raw(stores["a"], "main", "M00.attn2", 3), raw(stores["b"], "main", "M00.attn2", 3))
    expected = d[:, :, PROMPT].mean(axis=0, dtype=np.float64).T.reshape(len(PROMPT), 2, 2)
    np.testing.assert_allclose(np.load(npy), expected, rtol=1e-6, atol=1e-7)
    entry = next(e for e in json.loads((out / "manifest.json").read_text())["files"] if e["file"].endswith(".png"))
    assert entry["kind"] == "attention-aggregate-difference" and entry["base_run"] == "main"
    assert entry["difference"] == "a.zarr:main - b.zarr:main" and entry["color"] == DIFF_COLOR.to_json()
    assert entry["title"][0].startswith("difference a.zarr:main - b.zarr:main | 2x2 cross-attention")


def test_tokens_are_compared_by_position(stores, tmp_path):
    result = CliRunner().invoke(main, ["attention", str(stores["pair"]), "--pair", "layered", "--layers", "IN01",
                                       "--steps", "2", "--json", "--out", str(tmp_path / "p"), "--quiet"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert entry["file"] == "diff-IN01.attn2-step002-img0-cond-qk-bwr-autosym-block.png" and entry["pair"] == "layered"
    # where the prompts differ ("a pink hair girl" against the base's "a red hair car"), a column names both
    assert entry["columns"] == ["1:a", "2:pink-red", "3:h", "4:air", "5:girl-car"]


def upsampled_word_sum(path, run: str, tokens: list[int], steps: tuple[int, ...]) -> np.ndarray:
    """The word's attention (its tokens summed, heads averaged) summed over the cross-attention layers and
    ``steps``, each map resized to the image."""
    out = np.zeros((SIZE, SIZE), np.float64)
    for layer, hw in (("IN01.attn2", (8, 8)), ("M00.attn2", (2, 2))):
        for s in steps:
            m = raw(path, run, layer, s)[:, :, tokens].sum(axis=-1).mean(axis=0).reshape(hw)
            out += np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return out


def test_the_heatmap_difference_is_the_difference_of_the_summed_attention(stores, tmp_path):
    runs = compare_runs(dumpunet.open(stores["a"]), Pick(), base=stores["b"])
    d = heatmap_difference(runs, Pick(steps="1-2", **ONE), word="hair")  # tokens h, air
    expected = (upsampled_word_sum(stores["a"], "main", [3, 4], (1, 2))
                - upsampled_word_sum(stores["b"], "main", [3, 4], (1, 2)))
    assert np.abs(expected).max() > 0.01
    np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-5)
    out = tmp_path / "heat"
    result = CliRunner().invoke(main, ["heatmap", str(stores["a"]), str(stores["b"]), "--word", "hair", "--steps", "1-2",
                                       "--alpha", "0.6", "--plain", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out / "diff-heatmap-hair-img0-cond.npy"), d)
    colours = reference.colorize(d[None], DIFF_COLOR)[0].astype(np.float64)  # blue-white-red over [-m, m]
    image = dumpunet.open(stores["a"]).image(0).astype(np.float64)
    blend = np.clip(np.round(0.4 * image + 0.6 * colours), 0, 255).astype(np.uint8)
    got = np.asarray(Image.open(out / "diff-heatmap-hair-img0-cond.png").convert("RGB")).astype(int)
    assert np.abs(got - blend).max() <= 1  # float32 blending against float64 here


def test_what_cannot_be_compared_says_why(stores):
    a = dumpunet.open(stores["a"])
    with pytest.raises(OptionError, match="pair= compares the two runs of a pair in one store, base= two stores"):
        compare_runs(dumpunet.open(stores["pair"]), Pick(), pair="layered", base=stores["a"])
    with pytest.raises(OptionError, match="choose the pair with pair=..., not run="):
        compare_runs(dumpunet.open(stores["pair"]), Pick(run="base"), pair="layered")
    with pytest.raises(SelectionError, match=r"^base run 'main' of short.zarr: .*\b3\b"):
        attention_grid(a, Pick(blocks="IN01.attn2", steps="3", **ONE), base=stores["short"])
    with pytest.raises(SelectionError, match=r"^layer IN01.attn2 has recorded attention in run 'main' of a.zarr but "
                                             r"not in base run 'main' of blocks.zarr \(recorded there: none\)$"):
        attention_grid(a, Pick(blocks="IN01.attn2", steps="1", **ONE), base=stores["blocks"])


def test_the_cli_refuses_mixed_ways_of_naming_runs(stores, tmp_path):
    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x")])
        return result.exit_code, result.output

    code, output = run("attention", str(stores["a"]), str(stores["b"]), "--pair", "layered")
    assert code == 2 and "--pair picks a pair in one store; with two stores, name their runs as STORE:RUN" in output
    code, output = run("heatmap", str(stores["a"]), str(stores["b"]), "--word", "hair", "--run", "main")
    assert code == 2 and "with two stores, name their runs as STORE:RUN, not with --run" in output
    code, output = run("attention", f"{stores['a']}:main")
    assert code == 2 and "names a run; with one store, pick it with --run" in output
    code, output = run("heatmap", str(stores["pair"]), "--pair", "layered", "--word", "hair", "--colormap", "viridis")
    assert code == 1 and "a difference is drawn in diff's colours" in output
    assert not (tmp_path / "x").exists()

"""Heatmap files a reader can read: one per word, --merge, title strip, colour bar, --colormap, the .npy map."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_attention_view import IMAGE, TOKENS, T, store, write_store  # noqa: F401 - the attention store fixture

from dumpunet import Pick
from dumpunet.analyzer.colormaps import colormap
from dumpunet.analyzer.grid_labels import BAR_HEIGHT, BAR_WIDTH
from dumpunet.analyzer.heatmap import mark_point, overlay, word_heatmap, write_heatmaps
from dumpunet.cli import main
from dumpunet.errors import OptionError, SelectionError
from dumpunet.store.schema import TokenRow


def _find(picture: np.ndarray, part: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where ``part`` sits in ``picture`` pixel for pixel."""
    h, w = part.shape[:2]
    return [(y, x) for y in range(picture.shape[0] - h + 1) for x in range(picture.shape[1] - w + 1)
            if np.array_equal(picture[y : y + h, x : x + w], part)]


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _big(picture: np.ndarray) -> np.ndarray:
    """The 16-pixel test image's overlay as a labelled file holds it: twice enlarged (attention_scale(16, 16))."""
    return picture.repeat(2, axis=0).repeat(2, axis=1)


def test_one_file_per_word_with_its_map(store, tmp_path):  # noqa: F811
    r = CliRunner().invoke(main, ["heatmap", str(store.path), "--word", "pink,hair", "--layers", "M00",
                                  "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == [
        "heatmap-hair-img0-cond.npy", "heatmap-hair-img0-cond.png",
        "heatmap-pink-img0-cond.npy", "heatmap-pink-img0-cond.png", "manifest.json"]
    for word in ("pink", "hair"):
        heat = word_heatmap(store, word, Pick(blocks="M00"))
        saved = np.load(tmp_path / "h" / f"heatmap-{word}-img0-cond.npy", allow_pickle=False)
        assert saved.dtype == np.float32
        np.testing.assert_array_equal(saved, heat)
        # the overlay sits in the labelled picture, enlarged as attention tiles are, below a title strip
        where = _find(_png(tmp_path / "h" / f"heatmap-{word}-img0-cond.png"), _big(overlay(store.image(0), heat)))
        assert len(where) == 1 and where[0][0] > 0 and where[0][1] == 0
    assert not np.array_equal(word_heatmap(store, "pink", Pick(blocks="M00")),
                              word_heatmap(store, "hair", Pick(blocks="M00")))


def test_merge_is_one_file_of_the_sum(store, tmp_path):  # noqa: F811
    files = write_heatmaps(store, Pick(blocks="M00", steps="1-2"), word="pink,hair", merge=True, out=tmp_path / "m")
    assert [f.path.name for f in files] == ["heatmap-pink-hair-092680-img0-cond.png",
                                            "heatmap-pink-hair-092680-img0-cond.npy"]
    # the sum computed independently: the tokens of both words (2 and 3, 4), heads averaged, steps summed
    total = sum(store.run().attention("M00.attn2", s, guidance="cond", image=0)[:, :, [2, 3, 4]].sum(-1).mean(0)
                for s in (1, 2)).reshape(16, 16)
    want = (total - total.min()) / (total.max() - total.min())
    np.testing.assert_allclose(np.load(files[1].path), want, rtol=1e-5, atol=1e-6)
    assert files[0].params["colorbar"]["min"] == pytest.approx(float(total.min()), rel=1e-5)
    assert files[0].params["colorbar"]["max"] == pytest.approx(float(total.max()), rel=1e-5)


def test_title_strip_and_colour_bar(store, tmp_path):  # noqa: F811
    files = write_heatmaps(store, Pick(blocks="M00"), word="hair", out=tmp_path / "h", colormap="viridis")
    picture = _png(files[0].path)
    heat = word_heatmap(store, "hair", Pick(blocks="M00"))
    plain = _big(overlay(store.image(0), heat, colormap="viridis"))
    [(top, _)] = _find(picture, plain)
    assert picture[:top].any()  # the title's text above the overlay
    assert picture.shape[1] > 2 * IMAGE  # the title is wider than the enlarged 16-pixel overlay
    bar = np.repeat(colormap(np.linspace(0, 1, BAR_WIDTH), "viridis")[None], BAR_HEIGHT, axis=0)
    [(y, x)] = _find(picture, bar)
    assert y > top + 2 * IMAGE and x > 0  # below the overlay, after its low end's number
    manifest = json.loads((tmp_path / "h" / "manifest.json").read_text())["files"]
    assert manifest[0]["colormap"] == "viridis" and manifest[0]["word"] == "hair"


def test_default_colormap_keeps_the_overlay_byte_for_byte(store, tmp_path):  # noqa: F811
    # the overlay as it was written before the title strip: Turbo's published polynomial
    heat = word_heatmap(store, "hair", Pick(blocks="M00"))
    red = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
    green = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
    blue = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)
    turbo = np.stack([np.clip(sum(c * np.clip(heat, 0, 1).astype(np.float64) ** k for k, c in enumerate(p)), 0, 1)
                      for p in (red, green, blue)], axis=-1)
    before = np.clip(np.round(0.5 * 100 + 0.5 * np.round(turbo * 255)), 0, 255).astype(np.uint8)
    files = write_heatmaps(store, Pick(blocks="M00"), word="hair", out=tmp_path / "h")
    assert len(_find(_png(files[0].path), _big(before))) == 1


@pytest.mark.parametrize(("name", "ends"), [
    ("viridis", [[68, 1, 84], [253, 231, 37]]),  # matplotlib's _viridis_data[0] and [255], x 255
    # (turbo: test_attention_view checks its published polynomial)
    ("magma", [[0, 0, 4], [252, 253, 191]]),
])
def test_colormap_ends_match_the_published_values(name, ends):
    assert colormap(np.array([0.0, 1.0]), name).tolist() == ends
    mid = colormap(np.linspace(0, 1, 101), name).astype(int)
    assert (np.abs(np.diff(mid, axis=0)) < 24).all()  # no jumps: interpolated, not stepped


def test_bad_colormap_and_merge_without_words(store, tmp_path):  # noqa: F811
    with pytest.raises(OptionError, match=r"unknown colour map 'jet'; choose one of turbo, viridis, magma"):
        write_heatmaps(store, word="hair", colormap="jet", out=tmp_path / "x")
    r = CliRunner().invoke(main, ["heatmap", str(store.path), "--word", "hair", "--colormap", "jet",
                                  "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "'jet' is not one of 'turbo', 'viridis', 'magma'" in r.output
    r = CliRunner().invoke(main, ["heatmap", str(store.path), "--query", "0.5,0.5", "--merge",
                                  "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "--merge sums the heatmaps of several --word" in r.output
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_plain_writes_the_bare_overlay_as_the_viewer_shows_it(store, tmp_path):  # noqa: F811
    r = CliRunner().invoke(main, ["heatmap", str(store.path), "--query", "0.1,0.9", "--layers", "IN01", "--plain",
                                  "--colormap", "magma", "--out", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    heat = np.load(tmp_path / "q" / "querymap-x0.100-y0.900-img0-cond.npy")
    want = overlay(store.image(0), heat, colormap="magma")
    np.testing.assert_array_equal(_png(tmp_path / "q" / "querymap-x0.100-y0.900-img0-cond.png"), want)


def test_mark_point_draws_a_cross_hair_that_leaves_the_pixel_visible():
    picture = np.full((64, 48, 3), 100, np.uint8)
    marked = mark_point(picture, 10, 30)
    arm = max(4, 48 // 16)
    for d in range(2, arm + 1):  # white arms on all four sides, black beside them
        for y, x in ((30, 10 + d), (30, 10 - d), (30 + d, 10), (30 - d, 10)):
            assert marked[y, x].tolist() == [255, 255, 255], (y, x)
        assert marked[31, 10 + d].tolist() == [0, 0, 0] and marked[30 + d, 9].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(marked[29:32, 9:12], picture[29:32, 9:12])  # the pixel and its neighbours
    changed = np.argwhere((marked != picture).any(-1))
    assert np.abs(changed - [30, 10]).max() == arm + 1  # nothing beyond the arms' black ends
    assert (picture == 100).all()  # a copy
    edge = mark_point(picture, 0, 63)  # at a corner: clipped, not wrapped
    assert edge[63, 2].tolist() == [255, 255, 255] and (edge[:, 40:] == 100).all() and (edge[:50] == 100).all()


def test_query_map_marks_its_query_pixel_unless_plain(store, tmp_path):  # noqa: F811
    (png, npy) = write_heatmaps(store, Pick(blocks="IN01"), out=tmp_path / "q", query=(0.1, 0.9))
    assert png.params["marker"] == [1, 14]  # x = 0.1 * 16, y = 0.9 * 16, rounded down
    bare = overlay(store.image(0), np.load(npy.path))
    img = _png(png.path)
    # the enlarged overlay, marked at the middle of the query pixel's 2x2 block; not the bare one
    assert _find(img, mark_point(_big(bare), 3, 29)) and not _find(img, _big(bare))
    (plain, _) = write_heatmaps(store, Pick(blocks="IN01"), out=tmp_path / "p", query=(0.1, 0.9), plain=True)
    assert "marker" not in plain.params
    np.testing.assert_array_equal(_png(plain.path), bare)


def test_quiet_leaves_stderr_empty_and_json_lists_the_files(store, tmp_path):  # noqa: F811
    args = ["heatmap", str(store.path), "--word", "hair", "--layers", "M00"]
    loud = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert loud.exit_code == 0 and loud.stderr.splitlines()[-1].startswith("wrote 2 files to ")
    quiet = CliRunner().invoke(main, [*args, "--quiet", "--out", str(tmp_path / "b")])
    assert quiet.exit_code == 0 and quiet.output == ""
    listed = CliRunner().invoke(main, [*args, "--quiet", "--json", "--out", str(tmp_path / "c")])
    assert sorted(e["file"] for e in json.loads(listed.stdout)) == ["heatmap-hair-img0-cond.npy",
                                                                    "heatmap-hair-img0-cond.png"]


def test_a_word_of_some_block_prompts_sums_the_layers_that_saw_it(tmp_path):
    cute = ("<|startoftext|>", "a</w>", "cute</w>", "girl</w>") + ("<|endoftext|>",) * (T - 4)
    layered = write_store(tmp_path / "l.zarr", block_prompts={"cond": {"IN01": "a cute girl", "M00": "a pink hair girl"}},
                          prompt_tokens={"a cute girl": TokenRow(tuple(range(T)), cute, 5),
                                         "a pink hair girl": TokenRow(tuple(range(T)), tuple(TOKENS), 7)})
    only_in01 = word_heatmap(layered, "cute", Pick(blocks="IN01"))
    np.testing.assert_array_equal(word_heatmap(layered, "cute", Pick()), only_in01)  # M00's prompt has no 'cute'
    both = word_heatmap(layered, "girl", Pick())  # in both prompts: both layers
    assert not np.allclose(both, word_heatmap(layered, "girl", Pick(blocks="IN01")))
    with pytest.raises(SelectionError) as err:
        word_heatmap(layered, "blue", Pick())
    message = str(err.value)
    assert message.startswith("'blue' is in no picked layer's prompt: IN01.attn2: ")
    assert "its tokens are: a cute girl" in message and "M00.attn2: " in message and "a pink h air girl" in message


@pytest.mark.parametrize(("size", "scale"), [(8, 4), (16, 2), (32, 1)])
def test_a_small_image_is_enlarged_as_attention_tiles_are(tmp_path, size, scale):
    """A labelled heatmap and its difference enlarge an image under 32 pixels (attention_scale); --plain and the .npy keep its size."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "viewer"))
    import viewer_stores

    from dumpunet import open as open_store
    from dumpunet.analyzer.attention_diff import compare_runs
    from dumpunet.analyzer.heatmap import difference_overlay, heatmap_difference
    from dumpunet.analyzer.style import attention_scale

    assert attention_scale(size, size) == scale  # the rule attention grids' tiles follow
    old = viewer_stores.SIZE
    viewer_stores.SIZE = size
    try:
        pair = open_store(viewer_stores.make_attention_store(tmp_path / "p.zarr", pair=True))
    finally:
        viewer_stores.SIZE = old
    pick = Pick(blocks="M00", steps="1-3", images="0", guidance="cond")
    (png, npy) = write_heatmaps(pair, pick, word="2", pair="layered", out=tmp_path / "d")
    d = heatmap_difference(compare_runs(pair, Pick(), pair="layered"), pick, word="2")
    assert np.load(npy.path).shape == (size, size)
    bare = difference_overlay(pair.run("layered").image(0), d)
    big = bare.repeat(scale, axis=0).repeat(scale, axis=1)
    [(top, left)] = _find(_png(png.path), big)
    assert top > 0 and left == 0
    (plain, _) = write_heatmaps(pair, pick, word="2", pair="layered", plain=True, out=tmp_path / "p")
    np.testing.assert_array_equal(_png(plain.path), bare)

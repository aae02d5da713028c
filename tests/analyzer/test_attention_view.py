"""Attention grids and heatmaps from a synthetic store with known probabilities (no torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import dumpunet
from dumpunet import Pick
from dumpunet.store import schema
from dumpunet.analyzer.attention_grids import ATTENTION_COLOR, render_attention
from dumpunet.analyzer.color.colorize import ColorSpec, colorize, map_ranges, merge_ranges
from dumpunet.analyzer.heatmap import colormap, overlay, query_map, word_heatmap
from dumpunet.analyzer.output import text_part
from dumpunet.analyzer.tokens import label, select_tokens
from dumpunet.cli import main
from dumpunet.errors import OptionError, SelectionError
from dumpunet.store.schema import BlockInfo, LayerAttrs, PairInfo, RunAttrs, TokenRow
from dumpunet.store.writer import StoreWriter

TOKENS = ["<|startoftext|>", "a</w>", "pink</w>", "h", "air</w>", "girl</w>", "<|endoftext|>"] + ["<|endoftext|>"] * 3
NEG = ["<|startoftext|>", "bad</w>", "<|endoftext|>"] + ["<|endoftext|>"] * 7
HEADS, HW, T = 2, (4, 4), len(TOKENS)
IMAGE = 16  # pixels; the M00 layer runs at 16x16 too, so its heatmap needs no resampling


def probs(step: int, layer: int, hw=HW, queries: int | None = None, keys: int = T) -> np.ndarray:
    """Softmax rows [guidance, image, head, query, key], different for every argument."""
    rng = np.random.default_rng([step, layer, hw[0]])
    q = queries or hw[0] * hw[1]
    logits = rng.normal(size=(2, 1, HEADS, q, keys))
    p = np.exp(logits)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def write_store(path, prompts=None, **attrs):
    """The synthetic store: one run ``main``, or one run per ``{name: (prompt, negative)}``, paired to the first.

    ``attrs`` go to every run's :class:`RunAttrs` (e.g. per-block prompts).
    """
    prompts = prompts or {"main": ("", "")}
    block = BlockInfo("IN01", "down.0", ("down.0",), "down.0", (2, 4, 4), (2, 4, 4), True)
    mid = BlockInfo("M00", "mid", ("mid",), "mid", (2, 16, 16), (2, 16, 16), True)
    w = StoreWriter(path, model={}, versions={})
    w.set_block_table([block, mid])
    tokens = {"cond": (TokenRow(tuple(range(T)), tuple(TOKENS), 7),),
              "uncond": (TokenRow(tuple(range(T)), tuple(NEG), 3),)}
    kind = schema.ATTENTION_FEATURES["qk"]
    for run, (prompt, negative) in prompts.items():
        info = RunAttrs(prompt=prompt, negative_prompt=negative, n_images=1, guidance=("uncond", "cond"), steps=2,
                        height=IMAGE, width=IMAGE, attention_layers=("IN01.attn1", "IN01.attn2", "M00.attn2"), tokens=tokens,
                        **attrs)
        w.begin_run(run, info, [block], which=("output",), dtype="float32")
        w.add_arrays(run, {
            ("IN01.attn2", "qk"): (kind, (1, 2, HEADS, 16, T), "float32", {"layer": "IN01.attn2"}, LayerAttrs(layer_hw=(4, 4))),
            ("M00.attn2", "qk"): (kind, (1, 2, HEADS, 256, T), "float32", {"layer": "M00.attn2"}, LayerAttrs(layer_hw=(16, 16))),
            ("IN01.attn1", "qk"): (kind, (1, 2, HEADS, 4, 16), "float32", {"layer": "IN01.attn1"},
                                   LayerAttrs(layer_hw=(4, 4), cross_attention=False, query_rows=(0, 2), query_cols=(1, 3))),
        })
        for s in (1, 2):
            w.submit_call(run, step=s, substep=0, timestep=10.0 * s, slabs={
                ("IN01", "output"): np.zeros((2, 1, 2, 4, 4), np.float32),
                ("IN01.attn2", "qk"): probs(s, 1),
                ("M00.attn2", "qk"): probs(s, 2, (16, 16)),
                ("IN01.attn1", "qk"): probs(s, 3, queries=4, keys=16),
            })
        w.finish_run(run, images=np.full((1, IMAGE, IMAGE, 3), 100, np.uint8))
    names = list(prompts)
    if len(names) > 1:
        w.set_pairs([PairInfo(base=names[0], layered=run, label=run) for run in names[1:]])
    w.close()
    return dumpunet.open(path)


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "a.zarr")


def test_tokens_select_words_subtokens_and_indices():
    assert select_tokens("", TOKENS, 7) == [1, 2, 3, 4, 5]
    assert select_tokens("hair", TOKENS, 7) == [3, 4]
    assert select_tokens("pink hair, 0", TOKENS, 7) == [0, 2, 3, 4]
    assert select_tokens("0-9(+3)", TOKENS, 7) == [0, 3, 6, 9]
    assert [label(t) for t in TOKENS[:3]] == ["<start>", "a", "pink"]
    with pytest.raises(SelectionError, match=r"'blue' is not a word of the prompt; its tokens are: a pink h air girl"):
        select_tokens("blue", TOKENS, 7)


def test_grid_rows_are_heads_and_columns_are_tokens(store, tmp_path):
    files = render_attention(store, Pick(blocks="IN01", steps="2"), out=tmp_path / "r", tokens="pink,girl", scale=1,
                             png_encoder="zlib", plain=True, progress=False)
    assert [f.path.name for f in files] == [f"IN01.attn2-step002-img0-cond-tok-{text_part('pink,girl')}-qk-{ATTENTION_COLOR.slug()}.png"]
    entry = files[0].params
    assert entry["rows"] == ["h0", "h1"] and entry["columns"] == ["2:pink", "5:girl"]
    img = np.asarray(Image.open(files[0].path))
    p = probs(2, 1)[1, 0]  # cond half, image 0: [head, query, token]
    maps = np.stack([p[h, :, t].reshape(4, 4) for h in range(2) for t in (2, 5)])
    rows = np.repeat([[m.min(), m.max()] for m in (maps[:2], maps[2:])], 2, axis=0)  # default: one range per head
    want = colorize(maps, ATTENTION_COLOR, minmax=rows)
    assert entry["ranges"] == rows[::2].tolist()
    grid = img[-(2 * 5 - 1):, -(2 * 5 - 1):]  # the bottom-right corner holds the 2x2 grid of 4x4 tiles
    for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        np.testing.assert_array_equal(grid[r * 5 : r * 5 + 4, c * 5 : c * 5 + 4], want[k])
    assert img.shape[0] > 9 and img[: img.shape[0] - 9].any()  # the header band holds text


def test_negative_prompt_half_is_labelled_with_its_own_tokens(store, tmp_path):
    files = render_attention(store, Pick(blocks="M00", steps="1", guidance="uncond"), out=tmp_path / "r", progress=False)
    assert files[0].params["columns"] == ["1:bad"]


def test_self_attention_needs_a_query_and_uses_the_nearest_stored_one(store, tmp_path):
    with pytest.raises(SelectionError, match="only self-attention layers match 'IN01.attn1': give --query x,y"):
        render_attention(store, Pick(blocks="IN01.attn1"), out=tmp_path / "r", progress=False)
    files = render_attention(store, Pick(blocks="IN01.attn1", steps="1"), out=tmp_path / "r", query=(0.9, 0.1), scale=1,
                             progress=False)
    assert files[0].params["columns"] == ["query (3,0)"]  # stored rows 0,2 and cols 1,3: nearest is (x=3, y=0)


def test_word_heatmap_matches_an_independent_sum(store):
    heat = word_heatmap(store, "hair", Pick(blocks="M00", steps="1-2"))
    acc = sum(probs(s, 2, (16, 16))[1, 0][:, :, [3, 4]].sum(-1).mean(0).reshape(16, 16) for s in (1, 2))
    want = (acc - acc.min()) / (acc.max() - acc.min())
    np.testing.assert_allclose(heat, want, atol=1e-6)
    np.testing.assert_allclose(dumpunet.heatmap(store, "hair", Pick(blocks="M00")), heat)
    assert word_heatmap(store, "hair").shape == (IMAGE, IMAGE)  # IN01's 4x4 maps are upsampled


def test_word_heatmap_over_resolutions_is_the_sum_of_each_upsampled_map(tmp_path):
    # Two layers share 4x6, one is 8x12, one is at the image's own 16x24; fp16 as recorded, a
    # non-square image. The heatmap must equal every (layer, step) map upsampled on its own and summed.
    hws = {"IN01.attn2": (4, 6), "IN02.attn2": (4, 6), "IN04.attn2": (8, 12), "M00.attn2": (16, 24)}
    blocks = [BlockInfo(name, name, (name,), name, (2, 4, 4), (2, 4, 4), True) for name in ("IN01", "IN02", "IN04", "M00")]
    w = StoreWriter(tmp_path / "r.zarr", model={}, versions={})
    w.set_block_table(blocks)
    info = RunAttrs(n_images=1, guidance=("uncond", "cond"), steps=3, height=16, width=24, attention_layers=tuple(hws),
                    tokens={"cond": (TokenRow(tuple(range(T)), tuple(TOKENS), 7),)})
    w.begin_run("main", info, blocks[:1], which=("output",), dtype="float16")
    kind = schema.ATTENTION_FEATURES["qk"]
    w.add_arrays("main", {(name, "qk"): (kind, (1, 2, HEADS, h * wd, T), "float16", {"layer": name}, LayerAttrs(layer_hw=(h, wd)))
                          for name, (h, wd) in hws.items()})
    stored = {}
    for s in (1, 2, 3):
        for k, (name, hw) in enumerate(hws.items()):
            stored[name, s] = probs(s, 10 + k, hw).astype(np.float16)
        w.submit_call("main", step=s, substep=0, timestep=10.0 * s,
                      slabs={("IN01", "output"): np.zeros((2, 1, 2, 4, 4), np.float16),
                             **{(name, "qk"): stored[name, s] for name in hws}})
    w.finish_run("main", images=np.zeros((1, 16, 24, 3), np.uint8))
    w.close()

    def upsampled(name: str, s: int) -> np.ndarray:
        m = stored[name, s][1, 0].astype(np.float32)[:, :, [3, 4]].sum(-1).mean(0).reshape(hws[name])  # cond, "h"+"air"
        return np.asarray(Image.fromarray(m, mode="F").resize((24, 16), Image.Resampling.BICUBIC), np.float64)

    def normalized(weights: dict[str, float]) -> np.ndarray:
        acc = sum(weights[name] * upsampled(name, s) for name in hws for s in (1, 2, 3))
        return (acc - acc.min()) / (acc.max() - acc.min())

    want = normalized(dict.fromkeys(hws, 1.0))
    heat = word_heatmap(dumpunet.open(tmp_path / "r.zarr"), "hair", Pick())
    assert heat.shape == (16, 24)
    np.testing.assert_allclose(heat, want, rtol=1e-5, atol=1e-5)
    # the data tells the resolutions apart: dropping one, or counting one twice, moves the map far beyond the tolerance
    for name in ("IN01.attn2", "IN04.attn2", "M00.attn2"):
        for weight in (0.0, 2.0):
            assert np.abs(normalized({**dict.fromkeys(hws, 1.0), name: weight}) - want).max() > 1e-3


def test_query_map_and_overlay(store):
    m = query_map(store, (0.1, 0.9), Pick(blocks="IN01"))
    assert m.shape == (IMAGE, IMAGE) and m.min() == 0.0 and m.max() == 1.0
    blended = overlay(store.image(0), m, alpha=0.5)
    np.testing.assert_array_equal(blended, np.round(0.5 * 100 + 0.5 * colormap(m).astype(np.float32)).astype(np.uint8))
    # Turbo's published polynomial (GLSL: dot(kRedVec4, v4) + dot(kRedVec2, v2)), one value at a time
    red = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
    green = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
    blue = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)
    for x in (0.0, 0.3, 0.75, 1.0):
        want = [round(255 * min(1.0, max(0.0, sum(c * x**k for k, c in enumerate(poly))))) for poly in (red, green, blue)]
        assert colormap(np.array([x])).tolist() == [want]


def test_attention_errors_name_what_exists(store, tmp_path):
    with pytest.raises(SelectionError, match=r"no attention layer 'OUT11.attn2' recorded in run 'main' \(recorded: IN01.attn1, IN01.attn2, M00.attn2\)"):
        store.run().attention("OUT11.attn2", 1)
    with pytest.raises(SelectionError, match=r"layer M00.attn2 has no recorded 'k' \(record with --attention k\)"):
        store.run().attention("M00.attn2", 1, feature="k")


def test_cli_attention_and_heatmap(store, tmp_path):
    r = CliRunner().invoke(main, ["attention", str(store.path), "--blocks", "IN01-M00", "--steps", "1",
                                  "--tokens", "hair", "--out", str(tmp_path / "a"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == [
        f"IN01.attn2-step001-img0-cond-tok-hair-qk-{ATTENTION_COLOR.slug()}.png",
        f"M00.attn2-step001-img0-cond-tok-hair-qk-{ATTENTION_COLOR.slug()}.png",
    ]
    r = CliRunner().invoke(main, ["heatmap", str(store.path), "--word", "1", "--layers", "M00", "--guidance", "both",
                                  "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "h").glob("*.png")) == ["heatmap-1-img0-cond.png", "heatmap-1-img0-uncond.png"]
    for g in ("uncond", "cond"):
        heat = word_heatmap(store, "1", Pick(blocks="M00", guidance=g))
        want = overlay(store.image(0), heat, alpha=0.5).repeat(2, axis=0).repeat(2, axis=1)  # 16 px: enlarged twice
        picture = np.asarray(Image.open(tmp_path / "h" / f"heatmap-1-img0-{g}.png"))  # below its title strip
        assert [y for y in range(picture.shape[0]) if np.array_equal(picture[y : y + 2 * IMAGE, : 2 * IMAGE], want)] != []
    r = CliRunner().invoke(main, ["heatmap", str(store.path), "--word", "blue", "--out", str(tmp_path / "h2")])
    assert r.exit_code == 1 and r.output.startswith("Error: 'blue' is not a word of the prompt")
    assert not (tmp_path / "h2").exists()
    r = CliRunner().invoke(main, ["heatmap", str(store.path), "--out", str(tmp_path / "h3")])
    assert r.exit_code == 2 and "give exactly one of --word and --query" in r.output
    for cmd in ("attention", "heatmap"):
        assert CliRunner().invoke(main, [cmd, "--help"]).exit_code == 0


def test_heatmap_on_a_pair_store_says_which_run_and_prompt_it_used(tmp_path):
    st = write_store(tmp_path / "p.zarr", {"base": ("a pink girl, ", "bad"), "IN01": ("a pink girl, (~:IN01:hair:~)", "bad")})
    r = CliRunner().invoke(main, ["heatmap", str(st.path), "--word", "pink", "--layers", "M00", "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    (note,) = [line for line in r.output.splitlines() if line.startswith("heatmap: run")]
    assert note == ("heatmap: run base (the default of base, IN01; --run picks another), "
                    "prompt cond 'a pink girl, '")
    entry = next(e for e in json.loads((tmp_path / "h" / "manifest.json").read_text())["files"]
                 if e.get("kind") == "heatmap")
    assert (entry["run"], entry["prompt"]) == ("base", "a pink girl, ")
    r = CliRunner().invoke(main, ["heatmap", str(st.path), "--word", "0", "--run", "IN01", "--guidance", "both",
                                  "--layers", "M00", "--out", str(tmp_path / "h2")])
    assert r.exit_code == 0, r.output
    assert ("heatmap: run IN01 (chosen with --run), prompt uncond 'bad'; cond 'a pink girl, (~:IN01:hair:~)'"
            in r.output.splitlines())
    one = CliRunner().invoke(main, ["heatmap", str(write_store(tmp_path / "one.zarr").path), "--word", "pink",
                                    "--out", str(tmp_path / "h3")])
    assert one.exit_code == 0 and "heatmap: run" not in one.output  # one run: nothing to choose


def test_an_empty_prompt_says_so():
    empty = ["<|startoftext|>", "<|endoftext|>", "<|endoftext|>"]
    assert select_tokens("", empty, 2) == [0, 1]  # by default: what the U-Net saw, <start> and <end>
    with pytest.raises(SelectionError, match=r"^'hair' is not a word of the prompt; the prompt is empty \(or give token indices 0..2\)$"):
        select_tokens("hair", empty, 2)


def test_auto_scope_run_is_one_range_over_everything_selected(store, tmp_path):
    # auto_scope "run" means one (min, max) over every map selected, as in render and diff:
    # both guidance halves and both steps share it.
    color = ColorSpec(h="(2-2*v)/3", auto_scope="run")
    files = render_attention(store, Pick(blocks="IN01.attn2", steps="1-2", guidance="both"), color,
                             out=tmp_path / "r", tokens="1-2", scale=1, plain=True, progress=False)
    assert [(f.params["step"], f.params["guidance"]) for f in files] == [(1, "uncond"), (1, "cond"), (2, "uncond"), (2, "cond")]
    maps = {(s, g): np.stack([probs(s, 1)[g, 0][h, :, t].reshape(4, 4) for h in range(2) for t in (1, 2)])
            for s in (1, 2) for g in (0, 1)}
    minmax = merge_ranges(*(map_ranges(m) for m in maps.values()))
    for f, key in zip(files, maps):
        assert f.params["range"] == list(minmax)
        want = colorize(maps[key], color, minmax=minmax)
        grid = np.asarray(Image.open(f.path))[-(2 * 5 - 1):, -(2 * 5 - 1):]
        for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            np.testing.assert_array_equal(grid[r * 5 : r * 5 + 4, c * 5 : c * 5 + 4], want[k])


def _one_layer_store(path, qk: np.ndarray):
    """A store whose only attention layer IN01.attn2 (4x4) holds ``qk`` [head, query, token] at step 1 (cond)."""
    block = BlockInfo("IN01", "down.0", ("down.0",), "down.0", (2, 4, 4), (2, 4, 4), True)
    w = StoreWriter(path, model={}, versions={})
    w.set_block_table([block])
    info = RunAttrs(n_images=1, guidance=("uncond", "cond"), steps=1, height=IMAGE, width=IMAGE,
                    attention_layers=("IN01.attn2",), tokens={"cond": (TokenRow(tuple(range(T)), tuple(TOKENS), 7),)})
    w.begin_run("main", info, [block], which=("output",), dtype="float32")
    w.add_arrays("main", {("IN01.attn2", "qk"): (schema.ATTENTION_FEATURES["qk"], (1, 2, HEADS, 16, T), "float32",
                                                 {"layer": "IN01.attn2"}, LayerAttrs(layer_hw=(4, 4)))})
    slab = np.stack([np.zeros_like(qk), qk])[:, None].astype(np.float32)  # [guidance, image, head, query, token]
    w.submit_call("main", step=1, substep=0, timestep=10.0, slabs={("IN01", "output"): np.zeros((2, 1, 2, 4, 4), np.float32),
                                                                   ("IN01.attn2", "qk"): slab})
    w.finish_run("main", images=np.zeros((1, IMAGE, IMAGE, 3), np.uint8))
    w.close()
    return dumpunet.open(path)


def test_default_scope_compares_the_tokens_of_a_head(tmp_path):
    # The case: head 0 looks at token 1 (mean 0.0153) more than at token 2 (mean 0.0109),
    # with the same spatial pattern; head 1 looks at both about equally, on a far larger scale.
    pattern = np.linspace(-0.5, 0.5, 16)
    qk = np.zeros((HEADS, 16, T))
    qk[0, :, 1], qk[0, :, 2] = 0.0153 + 0.002 * pattern, 0.0109 + 0.002 * pattern
    qk[1, :, 1], qk[1, :, 2] = 0.5 + 0.1 * pattern, 0.45 - 0.1 * pattern
    st = _one_layer_store(tmp_path / "s.zarr", qk)
    stored = st.run().attention("IN01.attn2", 1, guidance="cond", image=0, dtype=np.float32)  # the raw array read back
    gray = ColorSpec("White/Black", "auto01", auto_scope="head")

    def tiles(color):
        (f,) = render_attention(st, Pick(blocks="IN01.attn2", steps="1"), color, out=tmp_path / color.slug(),
                                tokens="1,2", scale=1, png_encoder="zlib", plain=True, progress=False)
        g = np.asarray(Image.open(f.path))[-9:, -9:]  # 2 heads x 2 tokens of 4x4 pixels, 1-pixel gaps
        return f, {(h, t): g[h * 5 : h * 5 + 4, t * 5 : t * 5 + 4] for h in range(2) for t in range(2)}

    f, head = tiles(gray)
    for h in range(2):
        row = stored[h][:, [1, 2]].astype(np.float64)  # [query, token]: head h's row of the grid
        lo, hi = row.min(), row.max()
        for t in range(2):
            want = np.clip((row[:, t] - lo) / (hi - lo) * 256, 0, 255).astype(np.uint8).reshape(4, 4)
            np.testing.assert_array_equal(head[h, t], want)
        assert f.params["ranges"][h] == [lo, hi]
    assert head[0, 0].mean() > head[0, 1].mean() + 100  # token 1 clearly brighter than token 2 in head 0
    # the default attention colours use the same scope, and say so
    assert ATTENTION_COLOR.auto_scope == "head" and "over each head row" in ATTENTION_COLOR.words()
    # the original's per-tile stretch stays one choice away: there both tiles of head 0 look the same
    f, tile_ = tiles(ColorSpec("White/Black", "auto01", auto_scope="channel"))
    assert abs(float(tile_[0, 0].mean()) - float(tile_[0, 1].mean())) < 1 and "ranges" not in f.params
    r = CliRunner().invoke(main, ["attention", str(st.path), "--tokens", "1,2", "--method", "White/Black",
                                  "--auto-scope", "channel", "--scale", "1", "--plain", "--out", str(tmp_path / "cli"), "--json"])
    assert r.exit_code == 0, r.output
    cli = np.asarray(Image.open(next((tmp_path / "cli").glob("*.png"))))[-9:, -9:]
    np.testing.assert_array_equal(cli[:4, :4], tile_[0, 0])


def test_head_scope_is_for_attention_only(store, tmp_path):
    with pytest.raises(OptionError, match="auto scope 'head' .* applies to attention grids only"):
        dumpunet.render(store, Pick(blocks="IN01", steps="1"), ColorSpec(auto_scope="head"), out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def _find(picture: np.ndarray, part: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where ``part`` lies in ``picture`` unchanged."""
    h, w = part.shape[:2]
    first = np.all((picture == part[0, 0]).reshape(*picture.shape[:2], -1), axis=-1)  # candidates: the first pixel
    return [(int(y), int(x)) for y, x in zip(*np.nonzero(first)) if y + h <= picture.shape[0] and x + w <= picture.shape[1]
            and np.array_equal(picture[y : y + h, x : x + w], part)]


def test_labelled_grid_is_the_plain_grid_with_a_title_and_a_colour_bar_saying_the_scope(store, tmp_path):
    pick = Pick(blocks="IN01.attn2", steps="2")
    (plain,) = render_attention(store, pick, out=tmp_path / "p", tokens="pink,girl", plain=True, progress=False)
    (labelled,) = render_attention(store, pick, out=tmp_path / "l", tokens="pink,girl", progress=False)
    bare, img = np.asarray(Image.open(plain.path)), np.asarray(Image.open(labelled.path))
    (y, x), = _find(img, bare)  # the plain grid, headers and all, unchanged inside the labelled one
    assert x == 0 and y > 0 and img[:y].any()  # a title strip above it holds text
    # the legend names the scope and each head row's range, the manifest's ranges
    ranges = labelled.params["ranges"]
    assert ranges == plain.params["ranges"] and len(ranges) == HEADS
    from dumpunet.analyzer.grid_labels import number
    assert labelled.params["legend"] == "range per head row: " + ", ".join(
        f"h{h} {number(lo)} to {number(hi)}" for h, (lo, hi) in enumerate(ranges))
    assert labelled.params["title"][-1] == labelled.params["legend"]  # the title strip's last line
    # drawn with spaces a reader sees between the numbers and "to" (they once ran together: "0.005524to")
    from test_labels import text, word_gaps

    legend = labelled.params["legend"]
    assert _find(img[:y, :, 0], text(legend)) and sum(g >= 3 for g in word_gaps(text(legend))) == legend.count(" ")
    assert labelled.params["colorbar"] == {"min": None, "max": None, "spans": "head row"} and "colorbar" not in plain.params
    # below the grid: the colour bar, each row's lowest to highest value in the grid's colours
    want = colorize(np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, None], ATTENTION_COLOR, minmax=(0.0, 1.0))[0, 0]
    below = img[y + bare.shape[0]:]
    assert _find(below, want[None])


def test_shared_scope_legend_and_bar_span_the_range_used(store, tmp_path):
    color = ColorSpec("White/Black", "auto01", auto_scope="block")
    (f,) = render_attention(store, Pick(blocks="IN01.attn2", steps="1"), color, out=tmp_path / "b", tokens="1-2",
                            progress=False)
    lo, hi = f.params["range"]
    from dumpunet.analyzer.grid_labels import number
    assert f.params["legend"] == f"one range over the grid: {number(lo)} to {number(hi)}"
    assert f.params["colorbar"] == {"min": lo, "max": hi, "spans": "grid"}
    img = np.asarray(Image.open(f.path))
    ramp = np.clip(np.linspace(0.0, 1.0, 256) * 256, 0, 255).astype(np.uint8)  # White/Black: the gray ramp
    assert _find(img[-20:], ramp[None])


def _resolution_store(path):
    """Cross-attention IN01.attn2, IN02.attn2 (4x4), M00.attn2 (2x2) and self-attention IN01.attn1 (4x4), steps 1-2."""
    hws = {"IN01.attn2": (4, 4), "IN02.attn2": (4, 4), "M00.attn2": (2, 2)}
    blocks = [BlockInfo(n, n, (n,), n, (2, 4, 4), (2, 4, 4), True) for n in ("IN01", "IN02", "M00")]
    w = StoreWriter(path, model={}, versions={})
    w.set_block_table(blocks)
    info = RunAttrs(n_images=1, guidance=("uncond", "cond"), steps=2, height=IMAGE, width=IMAGE,
                    attention_layers=(*hws, "IN01.attn1"), tokens={"cond": (TokenRow(tuple(range(T)), tuple(TOKENS), 7),),
                                                                   "uncond": (TokenRow(tuple(range(T)), tuple(NEG), 3),)})
    w.begin_run("main", info, blocks[:1], which=("output",), dtype="float32")
    kind = schema.ATTENTION_FEATURES["qk"]
    arrays = {(n, "qk"): (kind, (1, 2, HEADS, h * wd, T), "float32", {"layer": n}, LayerAttrs(layer_hw=(h, wd)))
              for n, (h, wd) in hws.items()}
    arrays["IN01.attn1", "qk"] = (kind, (1, 2, HEADS, 16, 16), "float32", {"layer": "IN01.attn1"},
                                  LayerAttrs(layer_hw=(4, 4), cross_attention=False))
    w.add_arrays("main", arrays)
    stored = {}
    for s in (1, 2):
        for k, (n, hw) in enumerate(hws.items()):
            stored[n, s] = probs(s, 20 + k, hw)
        w.submit_call("main", step=s, substep=0, timestep=10.0 * s, slabs={
            ("IN01", "output"): np.zeros((2, 1, 2, 4, 4), np.float32), **{(n, "qk"): stored[n, s] for n in hws},
            ("IN01.attn1", "qk"): probs(s, 30, keys=16)})
    w.finish_run("main", images=np.zeros((1, IMAGE, IMAGE, 3), np.uint8))
    w.close()
    return dumpunet.open(path), stored, hws


def test_aggregate_per_resolution_is_the_mean_over_its_layers_and_heads(tmp_path):
    st, stored, hws = _resolution_store(tmp_path / "r.zarr")
    files = render_attention(st, Pick(steps="2"), aggregate="resolution", out=tmp_path / "a", tokens="pink,girl",
                             progress=False)
    pngs = [f for f in files if f.path.suffix == ".png"]
    assert [(f.params["layer"], f.params["layers"]) for f in pngs] == [
        ("res4x4", ["IN01.attn2", "IN02.attn2"]), ("res2x2", ["M00.attn2"])]  # the self-attention layer is left out
    assert pngs[0].path.name == f"res4x4-step002-img0-cond-tok-{text_part('pink,girl')}-qk-aggregate-{ATTENTION_COLOR.slug()}.png"
    for f, (res, layers) in zip(pngs, [((4, 4), ["IN01.attn2", "IN02.attn2"]), ((2, 2), ["M00.attn2"])]):
        assert f.params["rows"] == ["mean"] and f.params["columns"] == ["2:pink", "5:girl"]
        assert f.params["resolution"] == list(res) and len(f.params["ranges"]) == 1
        got = np.load(f.path.with_suffix(".npy"))
        want = np.mean([stored[n, 2][1, 0].mean(axis=0)[:, [2, 5]].T.reshape(2, *res) for n in layers], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # the data tells the layers apart: one layer alone is far from their mean
    got = np.load(pngs[0].path.with_suffix(".npy"))
    assert np.abs(got - stored["IN01.attn2", 2][1, 0].mean(axis=0)[:, [2, 5]].T.reshape(2, 4, 4)).max() > 1e-3
    with pytest.raises(OptionError, match="aggregate averages the cross-attention probabilities"):
        render_attention(st, Pick(), aggregate="resolution", average="mean", out=tmp_path / "x", progress=False)
    with pytest.raises(SelectionError, match="no cross-attention layer matches 'IN01.attn1'"):
        render_attention(st, Pick(blocks="IN01.attn1"), aggregate="resolution", out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    r = CliRunner().invoke(main, ["attention", str(st.path), "--steps", "1", "--aggregate", "resolution", "--guidance",
                                  "both", "--plain", "--out", str(tmp_path / "cli"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "cli").glob("res*-step001-*-qk-aggregate-*.png"))) == 4  # 2 sizes x 2 halves
    assert len(list((tmp_path / "cli").glob("res*.npy"))) == 4


def test_self_attention_grid_marks_the_query_pixel_on_every_tile_unless_plain(store, tmp_path):
    from dumpunet.analyzer.heatmap import mark_point

    pick = Pick(blocks="IN01.attn1", steps="1")
    (plain,) = render_attention(store, pick, out=tmp_path / "p", query=(0.9, 0.1), scale=8, plain=True, progress=False)
    (labelled,) = render_attention(store, pick, out=tmp_path / "l", query=(0.9, 0.1), scale=8, progress=False)
    assert labelled.params["marker"] == [3, 0] and "marker" not in plain.params  # stored cols 1,3, rows 0,2
    bare = np.asarray(Image.open(plain.path))
    want = bare.copy()
    gh = HEADS * 33 - 1  # 2 heads of 32-pixel tiles, 1-pixel gap
    grid = want[-gh:, -32:]
    for h in range(HEADS):
        grid[h * 33 : h * 33 + 32] = mark_point(grid[h * 33 : h * 33 + 32], 3 * 8 + 4, 0 * 8 + 4)
    img = np.asarray(Image.open(labelled.path))
    assert not np.array_equal(want, bare) and _find(img, want) and not _find(img, bare)

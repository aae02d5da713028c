"""The original extension's other outputs: attention and difference dumps, head averages, average + grid.

Every expected file is re-derived here from the store's raw zarr arrays (opened by their paths in
docs/store-format.md, not through dumpunet's reader) and the original's documented behaviour:

- its binary dump wrote each 2-D map as float32 bytes, row-major, no header, one file per
  channel; for attention, Q*K rearranged ``(head, token, query) -> (head*T + token, h, w)``, so
  file ``head*T + token`` is the map of how much each query pixel attends to that token;
- its "Dump difference tensors to files" dumped ``layered - base`` the same way;
- its averages over heads (or channels) were ``mean``, ``vector_norm(ord=1) / n`` and
  ``vector_norm(ord=2) / n``;
- with an average chosen it showed the averaged map and the channel grid, both.
"""

from __future__ import annotations

import json
import shlex
import struct
from dataclasses import replace

import numpy as np
import pytest
import reference as ref
import zarr
from click.testing import CliRunner
from PIL import Image
from synthetic_stores import make_paired_store
from test_cli_render import readme_commands

import dumpunet
from dumpunet import ColorSpec, GridStyle, Pick
from dumpunet.analyzer.attention_export import export_attention
from dumpunet.analyzer.attention_grids import ATTENTION_COLOR, render_attention
from dumpunet.analyzer.color.spec import DIFF_COLOR
from dumpunet.cli import main
from dumpunet.errors import OptionError
from dumpunet.store import schema
from dumpunet.store.schema import BlockInfo, LayerAttrs, RunAttrs, TokenRow
from dumpunet.store.writer import StoreWriter

HEADS, T, D, HW = 3, 7, 2, (4, 4)
TOKENS = ["<|startoftext|>", "a</w>", "pink</w>", "girl</w>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"]
STEPS = (1, 2)
SELF_ROWS, SELF_COLS = (0, 2), (1, 2, 3)


def _softmax(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    p = np.exp(rng.normal(size=shape) * 2)
    return p / p.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def attn(tmp_path_factory):
    """A store with IN01's cross-attention (qk, k, vqk; float16) and self-attention over 2x3 stored queries."""
    path = tmp_path_factory.mktemp("attn") / "attn.zarr"
    block = BlockInfo("IN01", "down.0", ("down.0",), "down.0", (2, 4, 4), (2, 4, 4), True)
    w = StoreWriter(path, model={}, versions={})
    w.set_block_table([block])
    row = TokenRow(tuple(range(T)), tuple(TOKENS), 4)
    info = RunAttrs(n_images=2, guidance=("uncond", "cond"), steps=2, height=32, width=32,
                    attention_layers=("IN01.attn1", "IN01.attn2"), tokens={"cond": (row, row), "uncond": (row, row)})
    w.begin_run("main", info, [block], which=("output",), dtype="float16")
    kinds = schema.ATTENTION_FEATURES
    q_self = len(SELF_ROWS) * len(SELF_COLS)
    w.add_arrays("main", {
        ("IN01.attn2", "qk"): (kinds["qk"], (2, 2, HEADS, 16, T), "float16", {"layer": "IN01.attn2"}, LayerAttrs(layer_hw=HW)),
        ("IN01.attn2", "k"): (kinds["k"], (2, 2, HEADS, T, D), "float16", {"layer": "IN01.attn2"}, LayerAttrs(layer_hw=HW)),
        ("IN01.attn2", "vqk"): (kinds["vqk"], (2, 2, HEADS, 16, D), "float16", {"layer": "IN01.attn2"}, LayerAttrs(layer_hw=HW)),
        ("IN01.attn1", "qk"): (kinds["qk"], (2, 2, HEADS, q_self, 16), "float16", {"layer": "IN01.attn1"},
                               LayerAttrs(layer_hw=HW, cross_attention=False, query_rows=SELF_ROWS, query_cols=SELF_COLS)),
    })
    for s in STEPS:
        rng = np.random.default_rng(s)
        w.submit_call("main", step=s, substep=0, timestep=100.0 * s, slabs={  # [guidance, image, ...]
            ("IN01", "output"): rng.normal(size=(2, 2, 2, 4, 4)).astype(np.float16),
            ("IN01.attn2", "qk"): _softmax(rng, (2, 2, HEADS, 16, T)).astype(np.float16),
            ("IN01.attn2", "k"): rng.normal(size=(2, 2, HEADS, T, D)).astype(np.float16),
            ("IN01.attn2", "vqk"): rng.normal(size=(2, 2, HEADS, 16, D)).astype(np.float16),
            ("IN01.attn1", "qk"): _softmax(rng, (2, 2, HEADS, q_self, 16)).astype(np.float16),
        })
    w.finish_run("main", images=np.zeros((2, 32, 32, 3), np.uint8))
    w.close()
    return path


def raw(store, path: str, step: int, run: str = "main") -> np.ndarray:
    """The raw array at ``runs/<run>/<path>`` for the U-Net call of ``step``: ``[image, guidance, ...]``."""
    root = zarr.open_group(store, mode="r")
    calls = list(root[f"runs/{run}/call_step"][:])
    return root[f"runs/{run}/{path}"][calls.index(step)]


def f32_bytes(values: np.ndarray) -> bytes:
    """What the original wrote for one map: its values as float32, row-major, little-endian."""
    flat = [float(v) for v in np.asarray(values).ravel()]
    return struct.pack(f"<{len(flat)}f", *flat)


def read_safetensors(path) -> tuple[dict, dict[str, np.ndarray]]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F16": "<f2", "F32": "<f4"}
    tensors = {}
    for name, t in header.items():
        lo, hi = t["data_offsets"]
        tensors[name] = np.frombuffer(data[8 + n + lo:8 + n + hi], dtypes[t["dtype"]]).reshape(t["shape"])
    return meta, tensors


# ----------------------------------------------------------------------------- attention binary dump


def test_attention_bin_is_the_originals_qk_dump_one_file_per_head_and_token(attn, tmp_path):
    files = export_attention(attn, Pick(blocks="IN01.attn2", steps="2", images="1", guidance="both"), out=tmp_path,
                             progress=False)
    qk = raw(attn, "attention/IN01.attn2/qk", 2)[1]  # image 1: [guidance, head, query, token]
    expected = {}
    for gi, g in enumerate(("uncond", "cond")):
        for head in range(HEADS):
            for token in range(T):
                expected[f"001-IN01.attn2-002-{head * T + token:04d}-{g}.bin"] = f32_bytes(qk[gi, head, :, token])
    assert {f.path.name: f.path.read_bytes() for f in files} == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*expected, "manifest.json"])
    entry = next(f.params for f in files if f.path.name == "001-IN01.attn2-002-0009-cond.bin")
    assert (entry["index"], entry["shape"], entry["kind"], entry["layer"]) == (9, [4, 4], "attention-export", "IN01.attn2")


def test_self_attention_bin_covers_the_stored_query_grid(attn, tmp_path):
    files = export_attention(attn, Pick(blocks="IN01.attn1", steps="1", images="0"), out=tmp_path, progress=False)
    qk = raw(attn, "attention/IN01.attn1/qk", 1)[0, 1]  # image 0, cond: [head, query (2x3), key (16)]
    assert len(files) == HEADS * 16
    for f in files:
        head, key = divmod(int(f.path.name.split("-")[3]), 16)
        assert f.path.read_bytes() == f32_bytes(qk[head, :, key])
        assert f.params["shape"] == [len(SELF_ROWS), len(SELF_COLS)]


def test_vqk_and_k_bin_files_follow_the_originals_channel_order(attn, tmp_path):
    vqk = export_attention(attn, Pick(blocks="IN01.attn2", steps="1", images="0"), feature="vqk", out=tmp_path / "v", progress=False)
    data = raw(attn, "attention/IN01.attn2/vqk", 1)[0, 1]  # [head, query, dim]
    assert [f.path.name for f in vqk] == [f"000-IN01.attn2-001-{c:04d}-cond.bin" for c in range(HEADS * D)]
    for c, f in enumerate(vqk):  # the original's output channel c = head * D + dim
        assert f.path.read_bytes() == f32_bytes(data[c // D, :, c % D])
    k = export_attention(attn, Pick(blocks="IN01.attn2", steps="1", images="0"), feature="k", out=tmp_path / "k", progress=False)
    keys = raw(attn, "attention/IN01.attn2/k", 1)[0, 1]
    assert [f.path.read_bytes() for f in k] == [f32_bytes(keys[h]) for h in range(HEADS)]


def test_attention_npy_and_safetensors_hold_the_stored_arrays(attn, tmp_path):
    (npy,) = export_attention(attn, Pick(blocks="IN01.attn2", steps="2", guidance="both"), format="npy",
                              out=tmp_path, progress=False)
    assert npy.path.name == "IN01.attn2-step002-qk.npy"
    a = np.load(npy.path, allow_pickle=False)
    expected = raw(attn, "attention/IN01.attn2/qk", 2)
    assert a.dtype == np.float16 and a.shape == (2, 2, HEADS, 16, T)
    assert a.tobytes() == expected.tobytes()
    (st,) = export_attention(attn, Pick(blocks="IN01.attn1", steps="1", images="1"), format="safetensors",
                             out=tmp_path, progress=False)
    meta, tensors = read_safetensors(st.path)
    assert list(tensors) == ["qk"]
    np.testing.assert_array_equal(tensors["qk"][0, 0], raw(attn, "attention/IN01.attn1/qk", 1)[1, 1])
    assert {k: meta[k] for k in ("layer", "feature", "step", "images", "guidance", "dims", "layer_hw", "query_hw")} == {
        "layer": "IN01.attn1", "feature": "qk", "step": "1", "images": "1", "guidance": "cond",
        "dims": "image,guidance,head,query,token", "layer_hw": "4x4", "query_hw": "2x3"}


def test_cli_export_layers(attn, tmp_path):
    run = CliRunner().invoke
    r = run(main, ["export", str(attn), "--layers", "IN01", "--steps", "1", "--images", "0", "--format", "bin", "--out", str(tmp_path / "a"),
                   "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    names = [e["file"] for e in json.loads(r.stdout)]
    assert len(names) == HEADS * T + HEADS * 16  # the block's cross- and self-attention layers
    qk = raw(attn, "attention/IN01.attn2/qk", 1)[0, 1]
    assert (tmp_path / "a" / "000-IN01.attn2-001-0015-cond.bin").read_bytes() == f32_bytes(qk[2, :, 1])
    r = run(main, ["export", str(attn), "--layers", "IN01.attn2", "--blocks", "IN01", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "give --blocks (block features) or --layers (attention), not both" in r.output
    r = run(main, ["export", str(attn), "--blocks", "IN01", "--feature", "k", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--feature chooses what --layers exports" in r.output
    r = run(main, ["export", str(attn), "--layers", "IN01.attn2", "--channels", "0", "--out", str(tmp_path / "b")])
    assert r.exit_code == 1 and "Error: export of attention layers does not take channels (got '0')" in r.output
    assert not (tmp_path / "b").exists()


def test_block_bin_stays_byte_identical_to_the_originals_dump(pair, tmp_path):
    r = CliRunner().invoke(main, ["export", str(pair), "--blocks", "IN03,OUT11", "--steps", "10", "--guidance", "both",
                                  "--format", "bin", "--out", str(tmp_path), "--quiet"])
    assert r.exit_code == 0, r.output
    expected = {}
    for block in ("IN03", "OUT11"):
        x = raw(pair, f"blocks/{block}/output", 10)  # [image, guidance, channel, y, x]
        for i in range(2):
            for gi, g in enumerate(("uncond", "cond")):
                for c in range(x.shape[2]):
                    expected[f"{i:03d}-{block}-010-{c:04d}-{g}.bin"] = f32_bytes(x[i, gi, c])
    got = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix == ".bin"}
    assert got == expected


# ----------------------------------------------------------------------------- difference tensors


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    return make_paired_store(tmp_path_factory.mktemp("pair") / "pair.zarr", n_images=2)


def test_diff_export_bin_is_layered_minus_base_under_the_originals_names(paired, tmp_path):
    files = dumpunet.diff(paired, Pick(blocks="IN04", steps="5", images="1"), out=tmp_path, export="bin",
                          finals=False, progress=False)
    base = raw(paired, "blocks/IN04/output", 5, run="base")[1, 1]
    layered = raw(paired, "blocks/IN04/output", 5, run="layered")[1, 1]
    dumps = {f.path.name: f for f in files if f.path.suffix == ".bin"}
    assert sorted(dumps) == [f"001-IN04-005-{c:04d}-cond.bin" for c in range(6)]
    for c in range(6):
        d = layered[c].astype(np.float32) - base[c].astype(np.float32)
        assert np.abs(d).max() > 0
        assert dumps[f"001-IN04-005-{c:04d}-cond.bin"].path.read_bytes() == f32_bytes(d)
    entry = dumps["001-IN04-005-0003-cond.bin"].params
    assert (entry["kind"], entry["run"], entry["base_run"], entry["pair"]) == ("diff-export", "layered", "base", "layered")
    assert any(f.path.name.startswith("diff-IN04-step005-img1-cond") for f in files)  # the maps are still drawn


def test_diff_export_npy_and_safetensors_via_the_cli(paired, tmp_path):
    for fmt in ("npy", "safetensors"):
        r = CliRunner().invoke(main, ["diff", str(paired), "--blocks", "M00,OUT11", "--steps", "20", "--guidance", "both",
                                      "--export", fmt, "--no-finals", "--out", str(tmp_path), "--quiet"])
        assert r.exit_code == 0, r.output
    for block in ("M00", "OUT11"):
        expected = (raw(paired, f"blocks/{block}/output", 20, run="layered").astype(np.float32)
                    - raw(paired, f"blocks/{block}/output", 20, run="base").astype(np.float32))
        a = np.load(tmp_path / f"diff-{block}-step020.npy", allow_pickle=False)
        assert a.dtype == np.float32 and a.tobytes() == expected.tobytes()
        meta, tensors = read_safetensors(tmp_path / f"diff-{block}-step020.safetensors")
        assert tensors["features"].tobytes() == expected.tobytes()
        assert (meta["run"], meta["base_run"], meta["pair"], meta["guidance"]) == ("layered", "base", "layered", "uncond,cond")
    r = CliRunner().invoke(main, ["diff", str(paired), "--export", "tiff", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- head averages


def original_average(x: np.ndarray, kind: str) -> np.ndarray:
    """The original's averaged_tensor over axis 0, in float64: mean, or a vector norm divided by n."""
    y = x.astype(np.float64)
    n = y.shape[0]
    if kind == "mean":
        return y.mean(axis=0)
    if kind == "1-norm":
        return np.abs(y).sum(axis=0) / n
    return np.sqrt((y * y).sum(axis=0)) / n


def grid_of(png, shape: tuple[int, int]) -> np.ndarray:
    """The tiles of a plain attention PNG: its bottom-right ``shape`` (headers sit above and left)."""
    img = np.asarray(Image.open(png))
    return img[img.shape[0] - shape[0]:, img.shape[1] - shape[1]:]


# Auto transforms hide a constant factor such as 1/heads: Linear shows it.
COLORS = [ATTENTION_COLOR, ColorSpec("White/Black", "linear", clamp_min=0.0, clamp_max=0.5)]


@pytest.mark.parametrize("color", COLORS, ids=["auto", "linear"])
@pytest.mark.parametrize("kind", ["mean", "1-norm", "2-norm"])
def test_attention_average_over_heads_has_the_originals_definitions(attn, tmp_path, kind, color):
    (f,) = render_attention(attn, Pick(blocks="IN01.attn2", steps="2", images="0"), color, out=tmp_path, tokens="1-3",
                            scale=2, average=kind, png_encoder="zlib", plain=True, progress=False)
    qk = raw(attn, "attention/IN01.attn2/qk", 2)[0, 1]  # [head, query, token]
    maps = np.stack([original_average(qk[:, :, t].reshape(HEADS, *HW), kind) for t in (1, 2, 3)]).astype(np.float32)
    # attention's default Auto scope is one range per head row: the averaged row is one row
    row = np.array([[maps.min(), maps.max()]] * 3) if color.scope == "head" else None
    expected = ref.tile(ref.colorize(maps, color, row), 3, 1, scale=2)
    np.testing.assert_array_equal(grid_of(f, expected.shape[:2]), expected)
    assert f.params["rows"] == [kind] and f.params["average"] == kind


def test_vqk_average_is_over_every_channel_and_file_names_keep_averages_apart(attn, tmp_path):
    pick = Pick(blocks="IN01.attn2", steps="1", images="0")
    color = ColorSpec("White/Black", "linear", clamp_min=0.0, clamp_max=1.0)
    written = [render_attention(attn, pick, color, out=tmp_path, feature="vqk", scale=1, average=kind,
                                png_encoder="zlib", plain=True, progress=False)[0] for kind in ("mean", "2-norm")]
    assert [f.path.name for f in written] == [f"IN01.attn2-step001-img0-cond-vqk-avg-{k}-{color.slug()}.png"
                                              for k in ("mean", "2norm")]
    vqk = raw(attn, "attention/IN01.attn2/vqk", 1)[0, 1]  # [head, query, dim] -> channels head*D+dim
    channels = vqk.transpose(0, 2, 1).reshape(HEADS * D, *HW)
    expected = ref.colorize(original_average(channels, "2-norm").astype(np.float32)[None], color)[0]
    np.testing.assert_array_equal(grid_of(written[1], HW), expected)
    r = CliRunner().invoke(main, ["attention", str(attn), "--layers", "IN01.attn2", "--steps", "1", "--average", "1-norm",
                                  "--images", "1", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert "-qk-avg-1norm-" in json.loads(r.stdout)[0]["file"]
    with pytest.raises(OptionError, match="unknown head average 'sum'"):
        render_attention(attn, pick, out=tmp_path / "x", average="sum", progress=False)


# ----------------------------------------------------------------------------- average beside the grid


def test_with_grid_writes_the_averaged_map_and_the_channel_grid(girl, tmp_path):
    pick, color = Pick(blocks="IN04", steps="5"), ColorSpec("White/Black", "linear", clamp_min=0.0, clamp_max=2.0)
    files = dumpunet.render(girl, pick, color, GridStyle(average="1-norm", with_grid=True, plain=True),
                            out=tmp_path / "both", progress=False)
    plain = dumpunet.render(girl, pick, color, GridStyle(plain=True), out=tmp_path / "plain", progress=False)
    slug = color.slug()
    assert [f.path.name for f in files] == [f"IN04-step005-img0-cond-avg-1norm-{slug}.png", f"IN04-step005-img0-cond-{slug}.png"]
    x = raw(girl, "blocks/IN04/output", 5)[0, 1]
    expected = ref.colorize(original_average(x, "1-norm").astype(np.float32)[None], color)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(files[0])), expected)
    assert files[1].path.read_bytes() == plain[0].path.read_bytes()
    assert (files[0].params["average"], files[1].params["average"]) == ("1-norm", None)


def test_with_grid_via_the_cli_and_its_mistakes(girl, tmp_path):
    run = CliRunner().invoke
    r = run(main, ["render", str(girl), "--blocks", "M00", "--steps", "20", "--average", "2-norm", "--with-grid",
                   "--auto-scope", "block", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    entries = json.loads(r.stdout)
    assert [e["average"] for e in entries] == ["2-norm", None]
    x = raw(girl, "blocks/M00/output", 20)[0, 1]
    assert entries[1]["range"] == [float(x.min()), float(x.max())]  # the grid's own range, not the average's
    r = run(main, ["render", str(girl), "--with-grid", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "with_grid writes the channel grid beside the averaged map: it needs an average" in r.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(OptionError, match="render_image draws one grid"):
        dumpunet.render_image(girl, Pick(blocks="M00", steps="20"), style=GridStyle(average="mean", with_grid=True))



def test_diff_with_grid_writes_the_averaged_difference_and_its_grid(paired, tmp_path):
    pick = Pick(blocks="M00", steps="10", images="0")
    both = dumpunet.diff(paired, pick, style=GridStyle(average="2-norm", with_grid=True, plain=True),
                         out=tmp_path / "both", finals=False, progress=False)
    plain = dumpunet.diff(paired, pick, style=GridStyle(plain=True), out=tmp_path / "plain", finals=False,
                          progress=False)
    maps = [f for f in both if f.path.name.startswith("diff-M00")]
    assert [f.params["average"] for f in maps] == ["2-norm", None]
    assert maps[1].path.read_bytes() == plain[0].path.read_bytes()
    d = (raw(paired, "blocks/M00/output", 10, run="layered")[0, 1].astype(np.float32)
         - raw(paired, "blocks/M00/output", 10, run="base")[0, 1].astype(np.float32))
    expected = ref.colorize(original_average(d, "2-norm").astype(np.float32)[None], DIFF_COLOR)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(maps[0])), expected)

# ----------------------------------------------------------------------------- the README's lines

README_ATTENTION = [line for line in readme_commands("dumpunet ") if "--layers IN01.attn2" in line]


def test_readme_attention_lines_run_as_written(attn, tmp_path, monkeypatch):
    (tmp_path / "girl.zarr").symlink_to(attn, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert len(README_ATTENTION) == 3
    for line in README_ATTENTION:
        r = CliRunner().invoke(main, shlex.split(line)[1:])
        assert r.exit_code == 0, (line, r.output)
    # export: every head x token of both steps and images (cond); attention: one PNG per step and image
    assert len(list((tmp_path / "dump-attn").glob("*.bin"))) == len(STEPS) * 2 * HEADS * T
    names = sorted(p.name.split("-cond-")[1] for p in (tmp_path / "attn").glob("*.png"))
    per_tile = replace(ATTENTION_COLOR, auto_scope="channel")  # --auto-scope channel: the original's ranges
    assert [n[:13] for n in names[:4]] == ["qk-avg-2norm-"] * 4 and names[4:] == [f"qk-{per_tile.slug()}.png"] * 4

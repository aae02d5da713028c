"""Pixel parity with the original web-UI extension (hnmr293's stable-diffusion-webui-dumpunet).

``Original`` below re-derives, for these tests, what the original did with one feature map
(docs/compatibility.md lists the behaviour): it cast the map to float32; the value transform
ran on the whole map in float32 (Auto: min/max of the map, a map whose min or max is NaN or
whose min equals its max passing through unchanged; Linear and Sigmoid as their tooltips
describe, White/Black Linear measuring |v| between X and Y); White/Black showed the transformed
value as it is, Red/Blue put t > 0 in red and -t in blue; Custom evaluated each expression on
one value at a time (a Python float, numpy's functions as the names) and, for HSL, handed H, L,
S unclipped to ``colorsys.hls_to_rgb``; each colour channel was stored as float32 and became
``uint8(clip(x * 256, 0, 255))``.

``Original(dtype=np.float32)`` is that arithmetic; ``np.float64`` is the same formulas done
exactly, which is what dumpunet computes: against it dumpunet must agree to the level, except
where a value sits within rounding of a level boundary under Sigmoid (numba's exp and numpy's
may differ by an ulp). Against the float32 arithmetic it may differ by one level, the
documented rounding difference.
"""

from __future__ import annotations

import colorsys
import json
import math

import numpy as np
import pytest

import dumpunet
from dumpunet.analyzer.color.colorize import ColorSpec, colorize
from dumpunet.analyzer.grid import grid_shape
from dumpunet.analyzer.reduce import channel_average
from dumpunet.layouts import builtin_layout
from dumpunet.store.schema import BlockInfo, RunAttrs
from dumpunet.store.writer import StoreWriter

METHODS = ("White/Black", "Red/Blue", "Custom")
TRANSFORMS = ("Auto [0,1]", "Auto [-1,1]", "Linear", "Sigmoid")
# Custom expressions (H, S, L or R, G, B), including HSL that leaves [0, 1]: hue below 0 and
# above 1, saturation above 1, lightness below 0 and above 1.
CUSTOM = [
    ("hsl", ("(2+v)/3", "1.0", "0.5")),
    ("hsl", ("v", "1.0", "0.5")),
    ("hsl", ("v/2 - 0.25", "1.5 - v", "0.4 + v/2")),
    ("hsl", ("3*v", "2*abs(v)", "0.5 - v")),
    ("rgb", ("abs(v)", "abs(v)", "abs(v)")),
    ("rgb", ("v", "1 - v", "v*v*1.5")),
    ("rgb", ("where(v > 0.2, 1, 0.3)", "clip(2*v, 0, 1)", "sqrt(abs(v)) - 0.1")),
]
# The original's namespace for expressions was numpy itself.
NUMPY_NAMES = {name: getattr(np, name) for name in
               ("abs", "sqrt", "where", "clip", "pi", "e", "sin", "exp", "power", "fmod", "round", "arcsin", "tanh")}


class Original:
    """The original's colorizer, re-derived; ``dtype`` float32 is its arithmetic, float64 the exact one."""

    def __init__(self, method, transform, *, dtype, space="hsl", exprs=("(2+v)/3", "1.0", "0.5"),
                 clamp=(-1.0, 1.0), gain=1.0, offset=0.0):
        self.method, self.transform, self.dtype = method, transform, dtype
        self.space, self.exprs = space, exprs
        self.clamp, self.gain, self.offset = clamp, gain, offset

    def values(self, x: np.ndarray) -> np.ndarray:
        """The transformed map, in ``dtype`` (numpy 1.x kept float32 maps float32 with scalars)."""
        f = self.dtype
        a = x.astype(np.float32).astype(f)
        gray = self.method == "White/Black"
        with np.errstate(all="ignore"):
            if self.transform.startswith("Auto"):
                lo, hi = a.min(), a.max()
                if np.isnan(lo) or np.isnan(hi) or lo == hi:
                    return a
                t = (a - lo) / (hi - lo)
                return (t - f(0.5)) * f(2) if self.transform == "Auto [-1,1]" else t
            if self.transform == "Linear":
                lo, hi = self.clamp
                c = np.clip(a, f(lo), f(hi))
                if gray:  # |v| between X and Y: X = 0 where the clamp's ends differ in sign, else the smaller |end|
                    big = max(abs(lo), abs(hi))
                    small = 0.0 if np.sign(lo) != np.sign(hi) else min(abs(lo), abs(hi))
                    return (np.abs(c) - f(small)) / f(big - small)
                return ((c - f(lo)) / f(hi - lo) - f(0.5)) * f(2)
            s = f(1) / (f(1) + np.exp(f(-self.gain) * (a + f(self.offset))))
            return np.abs(s - f(0.5)) * f(2) if gray else (s - f(0.5)) * f(2)

    def _custom(self, t: float) -> tuple[float, float, float]:
        with np.errstate(all="ignore"):
            got = [float(eval(e, {"__builtins__": {}}, {**NUMPY_NAMES, "v": np.float64(t)})) for e in self.exprs]
        if self.space == "hsl":
            h, s, l = got
            return colorsys.hls_to_rgb(h, l, s)
        return tuple(got)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = self.values(x)
        if self.method == "White/Black":
            chans = t[..., None]
        elif self.method == "Red/Blue":
            with np.errstate(invalid="ignore"):
                chans = np.stack([np.where(t > 0, t, 0), np.zeros_like(t), np.where(t < 0, -t, 0)], axis=-1)
        else:
            uniq, inverse = np.unique(t.astype(np.float64), return_inverse=True)
            table = np.array([self._custom(float(u)) for u in uniq], dtype=np.float64).reshape(-1, 3)
            chans = table[inverse.reshape(t.shape)].astype(self.dtype)
        with np.errstate(all="ignore"):
            y = np.clip(chans * self.dtype(256), 0, 255)
            y = np.where(np.isnan(y), 0, y)
        self.scaled = y  # the channel values x 256, for the tie tolerance
        out = y.astype(np.uint8)
        return out[..., 0] if self.method == "White/Black" else out


def _spec(method, transform, space="hsl", exprs=("(2+v)/3", "1.0", "0.5"), **kw) -> ColorSpec:
    names = ("r", "g", "b") if space == "rgb" else ("h", "s", "l")
    custom = dict(zip(names, exprs, strict=True)) if method == "Custom" else {}
    return ColorSpec(method, transform, space=space, **custom, **kw)


def _cases():
    for method in METHODS:
        for transform in TRANSFORMS:
            for space, exprs in CUSTOM if method == "Custom" else [("hsl", CUSTOM[0][1])]:
                yield method, transform, space, exprs


CASES = list(_cases())


def _maps(girl) -> dict[str, np.ndarray]:
    """Maps [N, H, W] the tests compare on: store maps (SD1 shapes, float16) and synthetic ones."""
    store = dumpunet.open(girl)
    rng = np.random.default_rng(12)
    half = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = half[np.isfinite(half)]
    return {
        "store": np.concatenate([store.features(b, 20, guidance="cond") for b in ("IN00", "IN01", "OUT08", "OUT11")]),
        "wide": (rng.standard_normal((4, 16, 16)) * [[[0.1]], [[1.0]], [[3.0]], [[40.0]]]).astype(np.float32),
        "constant": np.array([[[0.25] * 4], [[-0.5] * 4], [[3.0] * 4], [[0.0] * 4]], np.float32),
        # every finite float16, one map sorted (its range is the whole float16 range) ...
        "float16": np.sort(finite.astype(np.float32)).reshape(1, 1, -1)[:, :, :: 7],
        # ... and the small ones, where transforms are not saturated
        "float16-small": finite[np.abs(finite.astype(np.float32)) <= 4].reshape(1, 1, -1),
    }


def _tied(scaled: np.ndarray) -> np.ndarray:
    """Channel values within rounding of a level boundary: x*256 within 1e-9 of an integer."""
    return np.abs(scaled - np.round(scaled)) < 1e-9 * np.maximum(1.0, np.abs(scaled))


@pytest.fixture(scope="module")
def maps(girl):
    return _maps(girl)


@pytest.mark.parametrize(("method", "transform", "space", "exprs"), CASES,
                         ids=[f"{m}-{t}-{s}-{e[0]}" for m, t, s, e in CASES])
def test_pixels_equal_the_original_formulas_in_exact_arithmetic(maps, method, transform, space, exprs):
    spec = _spec(method, transform, space, exprs)
    for name, x in maps.items():
        if method == "Custom" and name.startswith("float16"):
            x = x[..., ::16]  # the re-derivation evaluates Custom one value at a time
        exact = Original(method, transform, dtype=np.float64, space=space, exprs=exprs)
        expected, scaled = [], []
        for m in x:  # the original coloured map by map
            expected.append(exact(m[None]))
            scaled.append(exact.scaled)
        expected, scaled = np.concatenate(expected), np.concatenate(scaled)
        got = colorize(x, spec)
        diff = np.abs(got.astype(np.int16) - expected)
        if transform == "Sigmoid" and diff.any():
            tied = _tied(scaled).reshape(diff.shape)
            assert diff.max() <= 1 and (diff[~tied] == 0).all(), f"{name}: {np.count_nonzero(diff)} pixels"
        else:
            assert (diff == 0).all(), f"{name}: {np.count_nonzero(diff)} pixels differ, by up to {diff.max()}"


@pytest.mark.parametrize(("method", "transform", "space", "exprs"), CASES,
                         ids=[f"{m}-{t}-{s}-{e[0]}" for m, t, s, e in CASES])
def test_the_originals_float32_rounding_moves_pixels_by_one_level_at_most(maps, method, transform, space, exprs):
    spec = _spec(method, transform, space, exprs)
    for name in ("store", "wide"):
        x = maps[name]
        f32 = Original(method, transform, dtype=np.float32, space=space, exprs=exprs)
        expected = np.concatenate([f32(m[None]) for m in x])
        diff = np.abs(colorize(x, spec).astype(np.int16) - expected)
        assert diff.max() <= 1, f"{name}: {diff.max()} levels"


def test_one_level_rounding_example():
    # HSL + Linear at v = 0.203125: hue (2 + v)/3 = 0.734375; colorsys's float64 red is
    # 0.40624999999999956 (level 103, here); the original stored it as float32, which rounds it
    # to 0.40625 (level 104, there). dumpunet keeps float64, bit for bit colorsys.
    x = np.full((1, 1, 1), 0.203125, np.float32)
    spec = ColorSpec("Custom", "Linear")
    assert colorize(x, spec)[0, 0, 0].tolist() == Original("Custom", "Linear", dtype=np.float64)(x)[0, 0, 0].tolist()
    assert colorize(x, spec)[0, 0, 0].tolist() == [103, 0, 255]
    assert Original("Custom", "Linear", dtype=np.float32)(x)[0, 0, 0].tolist() == [104, 0, 255]


def test_white_black_auto_keeps_the_negative_half_black():
    x = np.array([[[-1.0, 0.0, 1.0]]], np.float32)
    assert colorize(x, ColorSpec("White/Black", "Auto [-1,1]")).tolist() == [[[0, 0, 255]]]
    const = np.full((1, 2, 2), -0.7, np.float32)  # a constant map passes through: negative is black
    assert (colorize(const, ColorSpec("White/Black", "Auto [0,1]")) == 0).all()
    assert (colorize(const, ColorSpec("White/Black", "Auto [-1,1]")) == 0).all()


def test_custom_hsl_wraps_the_hue_and_leaves_s_and_l_unclipped():
    x = np.array([[[-0.25]]], np.float32)
    # Linear keeps v = -0.25; H = v is hue 0.75 after wrapping (purple-blue), not red. Red is
    # colorsys's ((-0.25 + 1/3) mod 1) * 6 = 0.49999999999999989, level 127.
    assert colorize(x, ColorSpec("Custom", "Linear", h="v")).tolist() == [[[[127, 0, 255]]]]
    assert [min(int(c * 256), 255) for c in colorsys.hls_to_rgb(-0.25, 0.5, 1.0)] == [127, 0, 255]
    # S = 2, L = 0.25, H = 0: m2 = 0.75, m1 = -0.25, red 0.75 (192); clipping S to 1 gave 128.
    y = np.array([[[0.0]]], np.float32)
    assert colorize(y, ColorSpec("Custom", "Linear", h="v", s="2", l="0.25")).tolist() == [[[[192, 0, 0]]]]


# -- averages ------------------------------------------------------------------------------------


def test_averages_are_the_originals(maps):
    x = maps["store"].astype(np.float32)
    c = x.shape[0]
    y = x.astype(np.float64)
    expected = {
        "mean": y.sum(axis=0) / c,  # the original's "sum" choice was the mean
        "1-norm": np.abs(y).sum(axis=0) / c,  # its norms were divided by the channel count
        "2-norm": np.sqrt((y * y).sum(axis=0)) / c,
        "l1": np.abs(y).sum(axis=0),
        "l2": np.sqrt((y * y).sum(axis=0)),
    }
    for kind, value in expected.items():
        np.testing.assert_allclose(channel_average(x, kind), value, rtol=2.0**-23, err_msg=kind)


# -- grid layout ---------------------------------------------------------------------------------

WIDTHS = {"sd1": (320, 640, 1280, 1280), "sdxl": (320, 640, 1280)}


def block_maps(family: str) -> dict[str, tuple[int, int]]:
    """Block -> (channels, level): output at 1/(8 * 2**level) of the image, from the layout's modules."""
    layout = builtin_layout(family)
    widths = WIDTHS[family]
    deepest = len(widths) - 1
    out = {}
    for block in layout.blocks:
        mods = layout.modules[block]
        first = mods[0].split(".")
        if mods[0] == "conv_in":
            out[block] = (widths[0], 0)
        elif mods[0] == "mid_block":
            out[block] = (widths[-1], deepest)
        elif first[0] == "down_blocks":
            d = int(first[1])
            out[block] = (widths[d], d + (first[2] == "downsamplers"))
        else:
            u = int(first[1])
            up = any(".upsamplers." in m for m in mods)
            out[block] = (widths[deepest - u], deepest - u - up)
    return out


def test_block_maps_are_the_known_architectures():
    sd1 = block_maps("sd1")
    assert [sd1[b] for b in ("IN00", "IN03", "IN04", "IN06", "IN07", "IN09", "M00", "OUT02", "OUT05", "OUT08", "OUT11")] \
        == [(320, 0), (320, 1), (640, 1), (640, 2), (1280, 2), (1280, 3), (1280, 3), (1280, 2), (1280, 1), (640, 0),
            (320, 0)]
    sdxl = block_maps("sdxl")
    assert [sdxl[b] for b in ("IN00", "IN03", "IN06", "IN08", "M00", "OUT02", "OUT05", "OUT08")] \
        == [(320, 0), (320, 1), (640, 2), (1280, 2), (1280, 2), (1280, 1), (640, 0), (320, 0)]


def original_grid(channels: int, tile_w: int, tile_h: int) -> tuple[int, int]:
    """The original's (cols, rows), re-derived from its layouts: it sized the whole grid in
    tiles of ``tile_w x tile_h`` units, gave each factor 2 of the channel count (then the odd
    rest) to the shorter side (width on a tie), then halved a side more than twice the other
    as long as its tile count stayed whole, doubling the other."""
    k = (channels & -channels).bit_length() - 1
    size = {"w": tile_w, "h": tile_h}
    count = {"w": 1, "h": 1}
    for factor in [2] * k + [channels >> k]:
        short = "w" if size["w"] <= size["h"] else "h"
        size[short] *= factor
        count[short] *= factor
    long, other = ("w", "h") if size["w"] > size["h"] else ("h", "w")
    while size[long] > 2 * size[other] and count[long] % 2 == 0:
        size[long] //= 2
        count[long] //= 2
        size[other] *= 2
        count[other] *= 2
    return count["w"], count["h"]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_grids_have_the_originals_rows_and_columns_at_every_size(family):
    blocks = block_maps(family)
    sizes = range(256, 1025, 8)
    for width in sizes:
        for height in sizes:
            lat_w, lat_h = width // 8, height // 8
            # the original's tile: the map at 1/(8*2**level), for an image rounded up to 64 pixels
            units_w, units_h = math.ceil(width / 64), math.ceil(height / 64)
            for block, (channels, level) in blocks.items():
                map_w, map_h = lat_w, lat_h
                for _ in range(level):
                    map_w, map_h = -(-map_w // 2), -(-map_h // 2)
                m = 8 >> level
                expected = original_grid(channels, m * units_w, m * units_h)
                got = grid_shape(channels, map_h, map_w, image=(height, width))
                assert got == expected, f"{family} {block} at {width}x{height}"


@pytest.mark.parametrize(("channels", "h", "w", "expected"), [
    (320, 64, 32, (32, 10)),  # SD1 IN00 at 256x512, the issue's example
    (10, 16, 16, (2, 5)),
    (960, 4, 6, (32, 30)),
    (320, 8, 8, (20, 16)),
    (1280, 8, 8, (40, 32)),
    (7, 8, 8, (7, 1)),
])
def test_synthetic_grids(channels, h, w, expected):
    assert grid_shape(channels, h, w) == original_grid(channels, w, h) == expected


def test_failing_sizes_of_the_issue_now_match():
    # 1:2 portraits and ~2.2:1 landscapes where dumpunet's old "most nearly square" rule differed.
    for width, height in [(256, 512), (320, 640), (384, 768), (448, 896), (512, 1024), (256, 1024),
                          (576, 256), (704, 320), (832, 384), (960, 448)]:
        got = grid_shape(320, height // 8, width // 8, image=(height, width))
        assert got == original_grid(320, math.ceil(width / 64), math.ceil(height / 64))


def test_render_lays_out_blocks_by_the_image_size(tmp_path):
    # A 256x512 run: IN00 has 320 channels of 64x32 and is drawn 32 tiles across, 10 down.
    path = tmp_path / "portrait.zarr"
    info = BlockInfo("IN00", "unet.conv_in", ("conv_in",), "unet.conv_in", (320, 64, 32), (4, 64, 32), False)
    w = StoreWriter(path, model={"name": "tiny-test"}, versions={})
    w.set_block_table([info])
    attrs = RunAttrs(n_images=1, guidance=("cond",), steps=1, height=512, width=256, latent_size=(64, 32))
    w.begin_run("main", attrs, [info], which=("output",), dtype="float16")
    x = np.random.default_rng(0).standard_normal((1, 1, 320, 64, 32)).astype(np.float16)
    w.submit_call("main", step=1, substep=0, timestep=999.0, slabs={("IN00", "output"): x})
    w.finish_run("main", images=np.zeros((1, 8, 8, 3), np.uint8), latents=np.zeros((1, 4, 1, 1), np.float32))
    w.close()
    (f,) = dumpunet.render(path, out=tmp_path / "out", progress=False)
    grid = json.loads((tmp_path / "out" / "manifest.json").read_text())["files"][0]["grid"]
    assert (grid["cols"], grid["rows"]) == (32, 10) == (f.params["grid"]["cols"], f.params["grid"]["rows"])


# -- recorded maps -------------------------------------------------------------------------------


@pytest.mark.recorder
@pytest.mark.slow
def test_recorded_tiny_sd1_maps_and_grids(tmp_path):
    """Maps of a real (tiny) SD1 recording at 200x136, an image size that is no multiple of 64."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from dumpunet.recorder.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.set_progress_bar_config(disable=True)
    path = tmp_path / "tiny.zarr"
    with dumpunet.record(pipe, path, blocks="IN00,IN04,M00,OUT11", progress=False):
        pipe(prompt="a cute girl, pink hair", num_inference_steps=2, height=136, width=200,
             generator=torch.Generator().manual_seed(1), output_type="np")
    store = dumpunet.open(path)
    for block in ("IN00", "M00"):
        x = store.features(block, 2, guidance="cond")[:2]
        for method, transform, space, exprs in CASES:
            exact = Original(method, transform, dtype=np.float64, space=space, exprs=exprs)
            expected = np.concatenate([exact(m[None]) for m in x])
            diff = np.abs(colorize(x, _spec(method, transform, space, exprs)).astype(np.int16) - expected)
            limit = 1 if transform == "Sigmoid" else 0  # an ulp of exp at a level boundary
            assert diff.max() <= limit, (block, method, transform, space, exprs)
    files = dumpunet.render(path, dumpunet.Pick(steps="2"), out=tmp_path / "out", progress=False)
    for f in files:
        c, h, w = store.features(f.params["block"], 2).shape
        grid = f.params["grid"]
        assert (grid["cols"], grid["rows"]) == original_grid(c, math.ceil(200 / 64), math.ceil(136 / 64)), f.path.name

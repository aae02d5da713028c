"""Plain-numpy references for the kernels: straightforward formulas, slow, written apart from them.

Tests tie every kernel to its reference here. The references follow the original extension's
code (``np.clip``, ``np.exp``, ``colorsys.hls_to_rgb`` through ``np.vectorize``) in float64 and
share nothing with the fast path except :func:`expressions.evaluate`, which is the definition
of an expression (and is tested against hand-written numpy separately).
"""

from __future__ import annotations

import colorsys

import numpy as np

from dumpunet.analyzer.color.colorize import ColorSpec
from dumpunet.analyzer.color.expressions import evaluate


def map_ranges(maps: np.ndarray) -> np.ndarray:
    """[N, 2] min and max over the finite values of each map; NaN where a map has none."""
    x = maps.astype(np.float64).reshape(maps.shape[0], int(np.prod(maps.shape[1:])))
    x = np.where(np.isfinite(x), x, np.nan)
    out = np.full((x.shape[0], 2), np.nan)
    for i, row in enumerate(x):
        finite = row[~np.isnan(row)]
        if finite.size:
            out[i] = finite.min(), finite.max()
    return out


def quantize(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        y = np.clip(x * 256, 0, 255)
    y[np.isnan(y)] = 0
    return y.astype(np.uint8)


def transform(maps: np.ndarray, spec: ColorSpec, ranges: np.ndarray | None = None) -> np.ndarray:
    """The transformed value of every element, float64 [N, H, W] (White/Black Sigmoid already |.|-ed)."""
    x = maps.astype(np.float64)
    gray = spec.method == "White/Black"
    mn_, mx_ = spec.clamp_min, spec.clamp_max
    with np.errstate(all="ignore"):
        if spec.transform in ("auto01", "auto11", "autosym"):
            if ranges is None:
                ranges = map_ranges(maps)
            if spec.transform == "autosym":  # Auto [-1,1] over [-m, m], m = max(|min|, |max|)
                m = np.maximum(np.abs(ranges[:, 0]), np.abs(ranges[:, 1]))
                ranges = np.stack([-m, m], axis=1)
            out = np.empty_like(x)
            for i in range(x.shape[0]):
                mn, mx = ranges[i]
                if np.isnan(mn) or np.isnan(mx) or mn == mx:
                    out[i] = x[i]
                    continue
                t = (np.clip(x[i], mn, mx) - mn) / (mx - mn)
                out[i] = t if spec.transform == "auto01" else (t - 0.5) * 2.0
            return out
        if spec.transform == "linear":
            if gray:
                big = max(abs(mn_), abs(mx_))
                small = 0.0 if np.sign(mn_) != np.sign(mx_) else min(abs(mn_), abs(mx_))
                return (np.abs(np.clip(x, mn_, mx_)) - small) / (big - small)
            return ((np.clip(x, mn_, mx_) - mn_) / (mx_ - mn_) - 0.5) * 2.0
        s = 1.0 / (1.0 + np.exp(-spec.gain * (x + spec.offset)))
        return np.abs(s - 0.5) * 2.0 if gray else (s - 0.5) * 2.0


_hls = np.vectorize(colorsys.hls_to_rgb, otypes=[np.float64, np.float64, np.float64])


def custom_channels(t: np.ndarray, spec: ColorSpec) -> np.ndarray:
    """Float RGB [..., 3] of a Custom spec at transformed values ``t``."""
    if spec.space == "rgb":
        chans = [evaluate(e, t) for e in (spec.r, spec.g, spec.b)]
    else:
        h, s, l = (evaluate(e, t) for e in (spec.h, spec.s, spec.l))  # unclipped, as the original
        with np.errstate(all="ignore"):  # colorsys on NaN
            chans = list(_hls(h, l, s)) if t.size else [t.copy(), t.copy(), t.copy()]
    return np.stack(chans, axis=-1)


def colorize(maps: np.ndarray, spec: ColorSpec, ranges: np.ndarray | None = None) -> np.ndarray:
    t = transform(maps, spec, ranges)
    if spec.method == "White/Black":
        return quantize(t)
    if spec.method == "Red/Blue":
        with np.errstate(invalid="ignore"):
            red = np.where(t > 0, t, 0.0)
            blue = np.where(t < 0, np.abs(t), 0.0)
        return np.stack([quantize(red), np.zeros(t.shape, np.uint8), quantize(blue)], axis=-1)
    return quantize(custom_channels(t, spec))


def channel_reduce(x: np.ndarray, kind: str) -> np.ndarray:
    """[C, H, W] -> [H, W] float32 over channels: mean, sum |x| ("l1"), sqrt(sum x**2) ("l2"),
    and the original's "1-norm" and "2-norm": those norms divided by C."""
    y = x.astype(np.float64)
    c = y.shape[0]
    with np.errstate(all="ignore"):
        if kind == "mean":
            r = y.mean(axis=0) if c else np.full(y.shape[1:], np.nan)
        elif kind in ("l1", "1-norm"):
            r = np.abs(y).sum(axis=0)
        else:
            r = np.sqrt((y * y).sum(axis=0))
        if kind in ("1-norm", "2-norm"):
            r = r / np.float64(c)
    return r.astype(np.float32)


def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) - b.astype(np.float32)


def tile(images: np.ndarray, cols: int, rows: int, scale: int = 1) -> np.ndarray:
    n, h, w = images.shape[:3]
    th, tw = h * scale, w * scale
    out = np.zeros((max(rows * (th + 1) - 1, 0), max(cols * (tw + 1) - 1, 0)) + images.shape[3:], np.uint8)
    for k in range(n):
        y, x = divmod(k, cols)
        big = images[k].repeat(scale, axis=0).repeat(scale, axis=1)
        out[y * (th + 1) : y * (th + 1) + th, x * (tw + 1) : x * (tw + 1) + tw] = big
    return out


def token_head_mean(probs: np.ndarray, tokens: list[int]) -> np.ndarray:
    """A word's map of one attention chunk [head, query, token]: its tokens summed, heads averaged (float32)."""
    return probs[:, :, tokens].astype(np.float32).sum(axis=-1).mean(axis=0)


def word_sum(store, word: str, pick) -> np.ndarray:
    """The word's summed attention at the image's size, as heatmap computed it before its kernel: every
    chunk read whole (``Run.attention``), :func:`token_head_mean` summed in float64 per resolution
    (layers in order, steps in order), each sum upsampled once."""
    from dumpunet.analyzer.heatmap import _upsample, by_resolution
    from dumpunet.analyzer.tokens import select_tokens

    r = store.run(pick.run)
    image, guidance = int(pick.images or 0), pick.guidance
    found = {}
    for layer in store.select_layers(pick.blocks, run=r.name):
        row = r.token_row(guidance=guidance, image=image, block=layer) if ".attn2" in layer else None
        if row is not None:
            found[layer] = select_tokens(word, list(row.tokens), row.length)
    out = np.zeros((r.info.height, r.info.width), np.float32)
    for hw, group in by_resolution(r, list(found)).items():
        acc = np.zeros(hw, np.float64)
        for layer in group:
            for step in store.select_steps(pick.steps, run=r.name):
                acc += token_head_mean(r.attention(layer, step, guidance=guidance, image=image), found[layer]).reshape(hw)
        out += _upsample(acc, out.shape)
    return out

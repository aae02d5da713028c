"""The word heatmap's fast path against numpy, bit for bit: the token kernel fed blocks of rows, the
Turbo overlay kernel, and whole heatmaps (and their differences) against the whole-chunk numpy sum."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dumpunet import Pick
from dumpunet.analyzer import heatmap
from dumpunet.analyzer.attention_diff import compare_runs
from dumpunet.analyzer.colormaps import colormap
from dumpunet.analyzer.heatmap import (
    add_token_mean,
    heatmap_difference,
    overlay,
    word_heatmap,
)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECIAL = [0.0, -0.0, 1.0, 0.5, 1e-8, 6e-8, 65504.0, np.inf, -np.inf, np.nan]  # 6e-8: a float16 subnormal


@st.composite
def chunks(draw):
    """A chunk [head, query, token] (float16 or float32, with special values), a token selection and a block size."""
    heads, queries, t = draw(st.integers(1, 11)), draw(st.integers(1, 40)), draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    values = st.one_of(st.floats(0, 1, width=16 if dtype is np.float16 else 32), st.sampled_from(SPECIAL))
    probs = draw(hnp.arrays(dtype, (heads, queries, t), elements=values))
    tokens = sorted(draw(st.sets(st.integers(0, t - 1), min_size=1, max_size=t)))
    return probs, tokens, draw(st.integers(1, heads * queries))


def blocks(probs: np.ndarray, size: int):
    """The chunk's rows [head * query, token] in blocks of ``size`` rows, as Run.attention_rows yields them."""
    rows = probs.reshape(-1, probs.shape[-1])
    return ((first, rows[first : first + size]) for first in range(0, len(rows), size))


@SETTINGS
@given(chunks())
def test_token_mean_over_blocks_is_numpy_bit_for_bit(chunk):
    probs, tokens, size = chunk
    start = np.linspace(0, 3, probs.shape[1])  # what the earlier chunks added
    acc = start.copy()
    add_token_mean(blocks(probs, size), probs.shape[:2], np.asarray(tokens, np.intp), acc)
    with np.errstate(all="ignore"):
        want = start + ref.token_head_mean(probs, tokens)
    np.testing.assert_array_equal(acc, want)  # NaN where numpy has NaN
    assert (np.signbit(acc) == np.signbit(want)).all()


def test_token_mean_of_eight_tokens_or_more_is_numpy_bit_for_bit():
    # numpy may sum 8 or more terms pairwise: that case keeps numpy's own sum, blocks of rows added in order
    rng = np.random.default_rng(5)
    probs = rng.random((3, 50, 20), dtype=np.float32) * np.float32(1e4) ** rng.random((3, 50, 20), dtype=np.float32)
    tokens = list(range(1, 19))
    acc = np.zeros(50)
    add_token_mean(blocks(probs, 7), (3, 50), np.asarray(tokens, np.intp), acc)
    np.testing.assert_array_equal(acc, ref.token_head_mean(probs, tokens).astype(np.float64))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.3, 1.0, 0.123456789, 1])
def test_turbo_overlay_kernel_is_the_numpy_blend(alpha):
    rng = np.random.default_rng(11)
    heat = np.concatenate([rng.random(256 * 255, dtype=np.float32),
                           np.float32([0, 1, -1, 2, 0.5, 1e-30, np.inf, -np.inf] * 32)]).reshape(256, 256)
    image = np.stack([*np.meshgrid(np.arange(256), np.arange(256)), rng.integers(0, 256, (256, 256))], -1).astype(np.uint8)
    want = heatmap._blend(image, colormap(heat), alpha)  # the two numpy steps the CLI used before the kernel
    np.testing.assert_array_equal(overlay(image, heat, alpha=alpha), want)
    assert (overlay(image, heat, alpha=alpha) != image).any() or alpha == 0


def test_overlay_with_nan_or_another_colour_map_takes_numpy():
    heat = np.float32([[0.2, np.nan], [0.7, 1.0]])
    image = np.full((2, 2, 3), 100, np.uint8)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(overlay(image, heat), heatmap._blend(image, colormap(heat), 0.5))
        np.testing.assert_array_equal(overlay(image, heat, colormap="magma"),
                                      heatmap._blend(image, colormap(heat, "magma"), 0.5))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A one-run store, another one (A - B), and a pair: viewer_stores' (float32 maps); and a float16 store."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "viewer"))
    from viewer_stores import make_attention_store

    base = tmp_path_factory.mktemp("heat")
    return {name: __import__("dumpunet").open(make_attention_store(base / f"{name}.zarr", **kw))
            for name, kw in {"one": {}, "other": {"seed": 3}, "pair": {"pair": True}}.items()}


@pytest.mark.parametrize("word", ["hair", "2", "girl", "0-6", "0-9"])
def test_word_heatmaps_equal_the_whole_chunk_numpy_sum(stores, word):
    st_ = stores["one"]
    for steps in ("1", "1-3"):
        pick = Pick(steps=steps, images="0", guidance="cond")
        raw = heatmap._word_sum(st_, word, pick)
        np.testing.assert_array_equal(raw, ref.word_sum(st_, word, pick))
        np.testing.assert_array_equal(word_heatmap(st_, word, pick), heatmap._normalize(ref.word_sum(st_, word, pick)))


@pytest.mark.parametrize("word", ["hair", "2"])
def test_heatmap_differences_equal_the_difference_of_whole_chunk_sums(stores, word):
    pick = Pick(steps="1-3", images="0", guidance="cond")
    a_b = heatmap_difference(compare_runs(stores["one"], pick, base=stores["other"]), pick, word=word)
    np.testing.assert_array_equal(a_b, ref.word_sum(stores["one"], word, pick) - ref.word_sum(stores["other"], word, pick))
    pair = stores["pair"]
    d = heatmap_difference(compare_runs(pair, Pick(), pair="layered"), pick, word="2")
    want = ref.word_sum(pair, "2", Pick(run="layered", steps="1-3")) - ref.word_sum(pair, "2", Pick(run="base", steps="1-3"))
    np.testing.assert_array_equal(d, want)
    assert np.abs(d).max() > 0

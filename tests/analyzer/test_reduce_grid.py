"""Channel averages, differences and grid tiling against their references and exact layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reference as ref
from dumpunet.analyzer.grid import grid_shape, tile
from dumpunet.analyzer.reduce import channel_average, difference

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

def _floats(dtype):
    return st.floats(width=16 if dtype == np.float16 else 32, allow_nan=True, allow_infinity=True)


@st.composite
def blocks(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    shape = (draw(st.integers(0, 6)), draw(st.integers(0, 5)), draw(st.integers(0, 5)))
    return draw(hnp.arrays(dtype, shape, elements=_floats(dtype)))


@SETTINGS
@given(x=blocks(), kind=st.sampled_from(["mean", "1-norm", "2-norm", "l1", "l2"]))
def test_channel_average_matches_the_reference(x, kind):
    got = channel_average(x, kind)
    expected = ref.channel_reduce(x, kind)
    assert got.dtype == np.float32 and got.shape == x.shape[1:]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)


def test_channel_average_by_hand():
    x = np.array([[[3.0, 1.0]], [[-4.0, np.nan]]], dtype=np.float32)
    assert channel_average(x, "mean").tolist()[0][0] == -0.5
    # The original's 1-norm and 2-norm are the norms divided by the channel count C = 2.
    assert channel_average(x, "1-norm")[0, 0] == 3.5 and channel_average(x, "2-norm")[0, 0] == 2.5
    assert channel_average(x, "l1")[0, 0] == 7.0 and channel_average(x, "l2")[0, 0] == 5.0
    assert np.isnan(channel_average(x, "2-norm")[0, 1])
    with pytest.raises(ValueError, match=r"unknown channel average 'sum' \(valid: mean, 1-norm, 2-norm, l1, l2\)"):
        channel_average(x, "sum")


@SETTINGS
@given(
    data=st.data(),
    dtypes=st.sampled_from([(np.float16, np.float16), (np.float32, np.float32), (np.float16, np.float32)]),
)
def test_difference_matches_the_reference(data, dtypes):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=7))
    a = data.draw(hnp.arrays(dtypes[0], shape, elements=_floats(dtypes[0])))
    b = data.draw(hnp.arrays(dtypes[1], shape, elements=_floats(dtypes[1])))
    with np.errstate(all="ignore"):
        expected = ref.diff(a, b)
    np.testing.assert_array_equal(difference(a, b), expected)


@pytest.mark.parametrize(
    ("n", "h", "w", "expected"),
    [(320, 8, 8, (20, 16)), (4, 8, 8, (2, 2)), (1, 8, 8, (1, 1)), (7, 8, 8, (7, 1)), (0, 8, 8, (0, 0)),
     (1280, 8, 8, (40, 32)), (640, 16, 16, (32, 20)), (12, 4, 16, (3, 4)), (6, 10, 3, (6, 1))],
)
def test_grid_shape(n, h, w, expected):
    # The original's rule, worked by hand (12 of 4x16: 16x4 -> 16x8 -> 16x16 -> 48x16, 3 odd: stays).
    assert grid_shape(n, h, w) == expected


def test_grid_of_320_tiles():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (320, 8, 8), dtype=np.uint8)  # never 0: separators are
    cols, rows = grid_shape(320, 8, 8)
    grid = tile(images, cols, rows)
    assert grid.shape == (16 * 9 - 1, 20 * 9 - 1) == (143, 179)
    for k in (0, 1, 19, 20, 319):
        y, x = divmod(k, 20)
        np.testing.assert_array_equal(grid[y * 9 : y * 9 + 8, x * 9 : x * 9 + 8], images[k])
    seps = np.zeros(grid.shape, bool)
    seps[8::9, :] = True
    seps[:, 8::9] = True
    assert (grid[seps] == 0).all() and (grid[~seps] != 0).all()


def test_small_grids_exactly():
    one = tile(np.full((1, 2, 3), 9, np.uint8), 1, 1)
    np.testing.assert_array_equal(one, np.full((2, 3), 9))
    seven = tile(np.arange(1, 8, dtype=np.uint8).reshape(7, 1, 1), *grid_shape(7, 1, 1))
    np.testing.assert_array_equal(seven, [[1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7]])
    four = tile(np.arange(1, 5, dtype=np.uint8).reshape(4, 1, 1, 1).repeat(3, axis=3), 2, 2, scale=2)
    assert four.shape == (5, 5, 3)
    expected = [[1, 1, 0, 2, 2], [1, 1, 0, 2, 2], [0, 0, 0, 0, 0], [3, 3, 0, 4, 4], [3, 3, 0, 4, 4]]
    np.testing.assert_array_equal(four[..., 0], expected)
    # A grid larger than the images leaves the extra tiles black.
    np.testing.assert_array_equal(tile(np.full((1, 1, 1), 5, np.uint8), 2, 1), [[5, 0, 0]])
    with pytest.raises(ValueError, match="a 2x1 grid cannot hold 3 images"):
        tile(np.zeros((3, 1, 1), np.uint8), 2, 1)


@SETTINGS
@given(data=st.data(), rgb=st.booleans(), scale=st.integers(1, 3))
def test_tile_matches_the_reference(data, rgb, scale):
    n, h, w = data.draw(st.integers(0, 9)), data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4))
    images = data.draw(hnp.arrays(np.uint8, (n, h, w, 3) if rgb else (n, h, w)))
    cols, rows = grid_shape(n, h, w)
    cols += data.draw(st.integers(0, 2))  # also grids with spare tiles
    np.testing.assert_array_equal(tile(images, cols, rows, scale), ref.tile(images, cols, rows, scale))


def test_the_average_option_offers_exactly_the_averages_computed():
    from dumpunet.analyzer.reduce import AVERAGES
    from dumpunet.analyzer.style import AVERAGES as OFFERED

    assert OFFERED == AVERAGES

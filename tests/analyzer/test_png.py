"""The PNG writer: every encoder decodes to the same pixels; the Up filter matches its definition."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from dumpunet.analyzer import png
from dumpunet.analyzer.png import ENCODERS, encode_png, filter_up

AVAILABLE = [e for e in ENCODERS if e != "libdeflate" or png._libdeflate() is not None]


@st.composite
def images(draw):
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    shape = (h, w) if draw(st.booleans()) else (h, w, 3)
    return draw(hnp.arrays(np.uint8, shape))


@settings(max_examples=40, deadline=None)
@given(image=images(), encoder=st.sampled_from(AVAILABLE))
def test_every_encoder_round_trips_exactly(image, encoder):
    data = encode_png(image, encoder=encoder)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == ("L" if image.ndim == 2 else "RGB")
        np.testing.assert_array_equal(np.asarray(im), image)


def test_up_filter_and_chunks_follow_the_png_spec():
    rows = np.array([[10, 200, 3], [5, 250, 3]], np.uint8)
    np.testing.assert_array_equal(filter_up(rows), [[2, 10, 200, 3], [2, 251, 50, 0]])
    data = encode_png(rows, encoder="zlib")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    n = int.from_bytes(data[8:12], "big")
    assert data[12:16] == b"IHDR" and n == 13
    assert data[16:29] == (3).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    assert int.from_bytes(data[29:33], "big") == zlib.crc32(data[12:29])
    idat_len = int.from_bytes(data[33:37], "big")
    assert data[37:41] == b"IDAT" and zlib.decompress(data[41 : 41 + idat_len]) == filter_up(rows).tobytes()
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"


def test_scratch_buffer_is_reused_and_bad_input_refused():
    scratch = np.empty(100, np.uint8)
    image = np.arange(12, dtype=np.uint8).reshape(4, 3)
    assert encode_png(image, encoder="zlib", scratch=scratch) == encode_png(image, encoder="zlib")
    assert scratch[:4].tolist() == [2, 0, 1, 2]
    with pytest.raises(ValueError, match=r"image must be uint8 \[H, W\] or \[H, W, 3\], got float32 \(2, 2\)"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="cannot encode an empty image"):
        encode_png(np.zeros((0, 2), np.uint8))
    with pytest.raises(ValueError, match=r"unknown PNG encoder 'gif' \(valid: auto, libdeflate, zlib, pillow\)"):
        encode_png(image, encoder="gif")

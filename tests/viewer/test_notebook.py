"""Notebook display: the store's HTML summary and in-memory renders."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

import dumpunet
from dumpunet.analyzer.grid import grid_shape, grid_size
from dumpunet.viewer.state import ViewState
from dumpunet.viewer.views import Rendered, view_image


def test_store_shows_as_an_html_summary(stores):
    html = dumpunet.open(stores[0])._repr_html_()
    assert html.startswith("<table>") and html.endswith("</table>")
    assert "IN00 4x8x8" in html and "OUT11 4x8x8" in html
    assert "steps 1-3 of 3, 1 image(s), guidance uncond, cond, complete" in html
    assert "a pink hair girl" in html and "IN01.attn2, M00.attn2, OUT11.attn1" in html
    assert "pair layered</th><td style='text-align:left'>base -&gt; layered" in dumpunet.open(stores[1])._repr_html_()


def test_an_in_memory_render_displays_converts_and_saves(stores, server, tmp_path):
    pic = view_image(stores[0], block="IN04", step=2, method="White/Black")
    assert isinstance(pic, Rendered) and pic.state == ViewState(block="IN04", step=2, method="White/Black")
    assert pic.pixels.dtype == np.uint8 and pic.shape == (*grid_size(*grid_shape(6, 4, 4), 4, 4), 3)
    assert (pic.pixels == pic.pixels[..., :1]).all()  # White/Black: three equal channels
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pic._repr_png_()))), pic.pixels)
    assert np.array_equal(np.asarray(pic.to_pil()), pic.pixels)
    saved = pic.save(tmp_path / "in04.png")
    assert np.array_equal(np.asarray(Image.open(saved)), pic.pixels)
    assert pic.command.startswith("dumpunet render") and "--blocks IN04 --steps 2" in pic.command
    served = server.png({"block": "IN04", "step": "2", "method": "White/Black"})[0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(served))), pic.pixels)

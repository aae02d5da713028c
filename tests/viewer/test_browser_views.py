"""The page in chromium, more views: the PNG download, the negative prompt's tokens, an SDXL ladder.

Helpers and fixtures are test_browser's (skipped there without Playwright or chromium).
"""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from test_browser import CHROMIUM, browser, page, png_of, settle, snap, url_state  # noqa: F401 - fixtures
from viewer_stores import SDXL_SHAPES, make_sdxl_store

from dumpunet.analyzer.grid import grid_shape, grid_size
from dumpunet.viewer.server import start

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def served(server, query: str) -> bytes:
    with urllib.request.urlopen(server.url + "api/image?" + query) as res:
        return res.read()


def test_download_png_saves_the_served_picture(page, server):  # noqa: F811
    page.goto(server.url + "?block=IN04&step=2&method=Red/Blue")
    grid = settle(page)
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.failure() is None
    data = download.path().read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data == served(server, grid["query"])
    assert download.suggested_filename == "girl-grid-IN04-step002-img0-cond.png"

    page.click("#views [data-view=final]")  # another view: the link follows it
    final = settle(page, grid)
    with page.expect_download() as info:
        page.click("#download")
    data = info.value.path().read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data == served(server, final["query"])
    assert final["command"].startswith("dumpunet render ") and " --final " in final["command"]
    assert info.value.suggested_filename == "girl-final-final-step002-img0-cond.png"


def test_the_negative_prompts_tokens_are_words_to_click(page, server):  # noqa: F811
    page.goto(server.url + "?view=attention&layer=IN01.attn2")
    cond = settle(page)
    assert page.inner_text("#tokens .half") == "prompt:"
    page.select_option("#guidance", "uncond")  # the guidance half, chosen in the page
    uncond = settle(page, cond)
    snap(page, "20-negative-tokens")
    assert url_state(page)["guidance"] == "uncond" and "--guidance uncond" in uncond["command"]
    assert page.inner_text("#tokens .half") == "negative prompt:"
    assert page.locator("#tokens .token").all_inner_texts() == ["<start>", "bad", "<end>"]  # viewer_stores.NEG

    page.click("#tokens .token >> text=bad")
    one = settle(page, uncond)
    assert url_state(page)["token"] == "1" and "--tokens 1" in one["command"] and one["error"] is None
    assert page.locator("#tokens .token.on").inner_text() == "bad"
    page.click("#views [data-view=heatmap]")
    heat = settle(page, one)
    snap(page, "21-negative-heatmap")
    assert heat["error"] is None and "--word 1" in heat["command"] and "--guidance uncond" in heat["command"]
    # the negative prompt's token 1 ("bad") acts elsewhere than the prompt's token 1 ("a")
    assert not np.array_equal(png_of(server, heat["query"]), png_of(server, heat["query"].replace("uncond", "cond")))


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    srv = start([make_sdxl_store(tmp_path_factory.mktemp("sdxl") / "xl.zarr")])
    yield srv
    srv.stop()


def test_an_sdxl_store_shows_its_19_blocks_in_the_ladder(page, sdxl):  # noqa: F811
    page.goto(sdxl.url + "?block=IN08")
    first = settle(page)
    snap(page, "22-sdxl-ladder")
    ladder = page.locator("#ladder .block")
    names = [b.get_attribute("data-block") for b in ladder.all()]
    # a U: IN00 beside OUT08 at the top, down to IN08 beside OUT00, then M00 at the bottom
    assert names == [n for i in range(9) for n in (f"IN{i:02d}", f"OUT{8 - i:02d}")] + ["M00"]
    assert all(b.is_enabled() for b in ladder.all())
    assert page.locator("#ladder [data-block=IN03] small").inner_text() == "6\u00d74\u00d74"
    assert "--blocks IN08 --steps 2" in first["command"]

    page.keyboard.press("ArrowRight")  # IN08 -> M00 -> OUT00: across the bottom of the U
    mid = settle(page, first)
    assert url_state(page)["block"] == "M00" and "--blocks M00" in mid["command"]
    page.keyboard.press("ArrowRight")
    out = settle(page, mid)
    assert url_state(page)["block"] == "OUT00" and page.locator("#ladder .on").get_attribute("data-block") == "OUT00"
    page.keyboard.press("ArrowLeft")
    back = settle(page, out)
    assert url_state(page)["block"] == "M00"

    page.click("#ladder [data-block=OUT08]")
    top = settle(page, back)
    c, h, w = SDXL_SHAPES["OUT08"]
    assert top["error"] is None and url_state(page)["block"] == "OUT08" and "--blocks OUT08" in top["command"]
    assert (top["height"], top["width"]) == grid_size(*grid_shape(c, h, w), h, w)
    assert png_of(sdxl, top["query"]).std() > 0  # drawn, not blank


def test_a_channel_subset_typed_in_the_page(page, server):  # noqa: F811
    page.goto(server.url + "?block=OUT08&step=1")  # OUT08: 6 channels of 8 x 8
    full = settle(page)
    page.fill("#channels", "5,0-2")  # applied after a 250 ms pause in typing
    subset = settle(page, full)
    snap(page, "23-channel-subset")
    assert url_state(page)["channels"] == "5,0-2" and "--channels 5,0-2 " in subset["command"]
    assert (subset["height"], subset["width"]) == grid_size(*grid_shape(4, 8, 8), 8, 8)
    assert "channels 5,0-2" in page.inner_text("#where")

    cols, _ = grid_shape(4, 8, 8)
    row, col = divmod(3, cols)  # the fourth tile: channel 5
    box = page.locator("#picture").bounding_box()
    page.mouse.click(box["x"] + box["width"] * (col * 9 + 4) / subset["width"],
                     box["y"] + box["height"] * (row * 9 + 4) / subset["height"])
    one = settle(page, subset)
    assert url_state(page)["channel"] == "5" and "--channels 5 " in one["command"]
    assert np.array_equal(png_of(server, one["query"]), png_of(server, "block=OUT08&step=1&channel=5"))
    page.click("#allchannels")  # back to the subset's grid
    back = settle(page, one)
    assert back["query"] == subset["query"] and page.input_value("#channels") == "5,0-2"

    page.goto(page.url)  # the URL keeps the subset
    again = settle(page)
    assert again["query"] == subset["query"] and page.input_value("#channels") == "5,0-2"

    page.fill("#channels", "0-9")
    bad = settle(page, again)
    snap(page, "24-bad-channel-subset")
    assert bad["error"] == "bad channel spec for OUT08: channel 9 out of range 0..5\n  0-9\n    ^"
    assert "Traceback" not in page.content()
    page.fill("#channels", "")
    cleared = settle(page, bad)
    assert cleared["error"] is None and "channels" not in url_state(page) and "--channels" not in cleared["command"]

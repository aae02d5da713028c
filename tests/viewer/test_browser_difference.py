"""The page's differences in chromium: "minus" (A - B of two stores) and the summary chart tab.

The pixels are the server's (tests/viewer/test_difference.py checks them against the raw
arrays); here the page must ask for them, show them, and say why where it cannot.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from synthetic_stores import make_paired_store, make_store
from test_browser import CHROMIUM, browser, page, png_of, snap, url_state  # noqa: F401 - fixtures; skips without playwright
from viewer_stores import make_attention_store

from dumpunet.analyzer.grid import grid_shape, grid_size
from dumpunet.analyzer.pick import Pick
from dumpunet.viewer.report import export_report, view_key
from dumpunet.viewer.server import start
from dumpunet.viewer.state import ViewState

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("minus")
    srv = start([make_store(root / "a.zarr", seed=0), make_store(root / "b.zarr", seed=3),
                 make_paired_store(root / "pair.zarr")])
    yield srv
    srv.stop()


def picture(tab, before: str = "") -> dict:
    """Wait until the picture's request differs from ``before`` and has loaded, or an error shows."""
    tab.wait_for_function(
        """(before) => { const img = document.getElementById('picture');
                         if (!document.getElementById('error').hidden) return true;
                         return img.dataset.query !== undefined && img.dataset.query !== before && img.complete
                                && img.naturalWidth > 0; }""", arg=before)
    return tab.evaluate("""() => ({
        query: document.getElementById('picture').dataset.query,
        width: document.getElementById('picture').naturalWidth,
        height: document.getElementById('picture').naturalHeight,
        error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        command: document.getElementById('command').textContent,
        where: document.getElementById('where').textContent,
        summary: !document.querySelector('#views [data-view=summary]').hidden,
    })""")


def test_minus_shows_a_minus_b_and_its_summary_chart(page, three):  # noqa: F811
    page.goto(three.url + "?block=OUT11&step=5&method=Red/Blue")
    alone = picture(page)
    assert alone["error"] is None and not alone["summary"]  # no pair, nothing subtracted: no chart
    page.select_option("#minus", "1")
    minus = picture(page, alone["query"])
    snap(page, "minus-01-grid")
    assert url_state(page)["minus"] == "1" and "minus=1" in minus["query"]
    assert minus["error"] is None and minus["where"].endswith("\u2212 store b.zarr")
    assert minus["command"].startswith("dumpunet diff ") and minus["summary"]  # diff A B writes A - B
    assert np.array_equal(png_of(three, minus["query"]), png_of(three, "block=OUT11&step=5&method=Red/Blue&minus=1"))
    assert not np.array_equal(png_of(three, minus["query"]), png_of(three, alone["query"]))

    page.click("#views [data-view=summary]")
    chart = picture(page, minus["query"])
    snap(page, "minus-02-summary")
    assert chart["error"] is None and min(chart["width"], chart["height"]) > 100
    assert "view=summary" in chart["query"] and "summary chart" in chart["where"]

    page.click("#views [data-view=attention]")
    refused = picture(page, chart["query"])  # these stores hold no attention: the page says so
    assert refused["error"] == "run 'main' was recorded without cross-attention"


def test_a_pairs_summary_chart_tab(page, three):  # noqa: F811
    page.goto(three.url + "?store=2")
    first = picture(page)
    assert first["error"] is None and first["summary"]
    page.click("#views [data-view=summary]")
    chart = picture(page, first["query"])
    snap(page, "pair-summary")
    assert chart["error"] is None and min(chart["width"], chart["height"]) > 100
    assert chart["command"].startswith("dumpunet diff ") and "--no-finals" in chart["command"]
    page.click("#ladder [data-block=IN04]")  # a block leads back to its grid
    grid = picture(page, chart["query"])
    assert "view" not in url_state(page) and url_state(page)["block"] == "IN04" and grid["error"] is None  # grid: the default


@pytest.fixture(scope="module")
def attention_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention-pair")
    srv = start([make_attention_store(root / "pair.zarr", pair=True), make_attention_store(root / "other.zarr", seed=5)])
    yield srv
    srv.stop()


def test_difference_on_an_attention_view_and_its_command(page, attention_pair):  # noqa: F811
    page.goto(attention_pair.url + "?view=attention&layer=IN01.attn2&step=2&head=1")
    layered = picture(page)
    assert layered["error"] is None and layered["command"].startswith("dumpunet attention ")
    assert "--heads 1 " in layered["command"] and "--run layered " in layered["command"]
    page.click("#mode [data-mode=diff]")
    diff = picture(page, layered["query"])
    snap(page, "attention-difference")
    assert diff["error"] is None and url_state(page)["mode"] == "diff" and "pair layered: diff" in diff["where"]
    assert not np.array_equal(png_of(attention_pair, diff["query"]), png_of(attention_pair, layered["query"]))
    path = attention_pair.paths[0]
    assert diff["command"].startswith(f"dumpunet attention {path} --pair layered --layers IN01.attn2 --steps 2 "
                                      "--heads 1 ") and "--run" not in diff["command"]

    page.click(".token[data-index='5']")  # girl (car in the base's prompt): the grid narrows to it
    token = picture(page, diff["query"])
    assert token["error"] is None and "--tokens 5 --heads 1 " in token["command"]
    page.click("#views [data-view=heatmap]")  # and its word heatmap's difference
    heat = picture(page, token["query"])
    assert heat["error"] is None and "view=heatmap" in heat["query"] and "mode=diff" in heat["query"]
    assert heat["command"].startswith(f"dumpunet heatmap {path} --pair layered --word 5 ")

    page.click("#mode [data-mode=layered]")  # the layered run minus the other store
    page.select_option("#minus", "1")
    minus = picture(page, picture(page, heat["query"])["query"])
    assert minus["error"] is None and "minus=1" in minus["query"]
    assert minus["command"].startswith(f"dumpunet heatmap {path}:layered {attention_pair.paths[1]} --word 5 ")


def shown_pixels(tab) -> np.ndarray:
    """The pixels of the picture the page shows (its bytes, fetched by the page itself)."""
    data = tab.evaluate("""async () => { const img = document.getElementById('picture');
        return Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer())); }""")
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB")).astype(int)


def test_a_difference_is_drawn_in_diffs_diverging_colours_until_a_colour_is_chosen(page, attention_pair):  # noqa: F811
    page.goto(attention_pair.url + "?view=attention&layer=IN01.attn2&step=2")
    layered = picture(page)
    assert page.input_value("#transform") == "auto01" and page.input_value("#space") == "hsl"
    page.click("#mode [data-mode=diff]")
    diff = picture(page, layered["query"])
    snap(page, "attention-difference-colours")
    state = url_state(page)
    assert state["mode"] == "diff" and not {"transform", "space", "r", "g", "b"} & set(state)  # defaults: not in the URL
    assert "--transform autosym --space rgb --plain" in diff["command"]
    page.wait_for_function("() => document.getElementById('transform').value === 'autosym'")
    assert page.input_value("#space") == "rgb" and page.input_value("#r") == "minimum(1, 1+v)"
    pix = shown_pixels(page)
    assert np.array_equal(pix, png_of(attention_pair, diff["query"]).astype(int))
    tiles = pix[(pix[..., 0] != pix[..., 1]) | (pix[..., 1] != pix[..., 2])]  # not the grey labels and gaps
    # blue (-) white (0) red (+): each tile pixel is saturated in red or in blue; both signs show
    assert ((tiles[:, 0] == 255) | (tiles[:, 2] == 255)).all()
    assert ((tiles[:, 0] == 255) & (tiles[:, 2] < 128)).any() and ((tiles[:, 2] == 255) & (tiles[:, 0] < 128)).any()

    page.select_option("#transform", "linear")  # a colour chosen is kept...
    linear = picture(page, diff["query"])
    assert url_state(page)["transform"] == "linear" and "--transform linear " in linear["command"]
    assert "--space rgb" in linear["command"]  # ...and the fields left alone stay diff's
    page.click("#mode [data-mode=layered]")  # ...also when the difference is turned off
    back = picture(page, linear["query"])
    assert url_state(page)["transform"] == "linear" and "--transform linear " in back["command"]
    assert "--space hsl" in back["command"] and "--run layered " in back["command"]
    page.wait_for_function("() => document.getElementById('space').value === 'hsl'")
    assert page.input_value("#transform") == "linear"


def test_a_static_report_of_two_stores_shows_a_minus_b_and_a_channel_subset(page, tmp_path):  # noqa: F811
    paths = [make_attention_store(tmp_path / "girl.zarr"), make_attention_store(tmp_path / "other.zarr", seed=5)]
    out = tmp_path / "report"
    export_report(paths, out, Pick(blocks="IN01,OUT11", steps="2,3", channels="1-2"), progress=False)
    page.goto((out / "index.html").as_uri() + "?block=OUT11")
    first = picture(page)
    snap(page, "report-subset")
    assert first["error"] is None and url_state(page)["channels"] == "1-2"  # the report opens on its subset
    assert "--channels 1-2" in first["command"]
    assert (first["height"], first["width"]) == grid_size(*grid_shape(2, 8, 8), 8, 8)  # OUT11's channels 1, 2

    page.select_option("#minus", "1")
    minus = picture(page, first["query"])
    snap(page, "report-minus")
    assert minus["error"] is None and url_state(page)["minus"] == "1" and minus["where"].endswith("\u2212 store other.zarr")
    assert minus["command"].startswith(f"dumpunet diff {paths[0]}:main {paths[1]} --blocks OUT11 --steps 3 ")
    assert "--transform autosym --space rgb" in minus["command"]  # diff's colours, the report's default for A - B
    text = (out / "report.js").read_text()
    views = json.loads(text[text.index("{"):text.rindex("}") + 1])["views"]
    entry = views[view_key(ViewState(minus=1, run="main", block="OUT11", channels="1-2", step=3))]
    assert page.evaluate("() => document.getElementById('picture').src").endswith("/" + entry["file"])

    page.click("#views [data-view=summary]")
    chart = picture(page, minus["query"])
    assert chart["error"] is None and min(chart["width"], chart["height"]) > 20 and "view=summary" in chart["query"]
    page.click("#views [data-view=attention]")
    attn = picture(page, chart["query"])
    assert attn["error"] is None and attn["command"].startswith(f"dumpunet attention {paths[0]}:main {paths[1]} ")
    page.click("#views [data-view=heatmap]")  # two stores' word heatmaps: the server's
    page.click("#tokens .token >> text=pink")
    page.wait_for_function("() => !document.getElementById('error').hidden")
    assert "not exported" in page.inner_text("#error")

"""The page's differences in chromium: "minus" (A - B of two stores) and the summary chart tab.

The pixels are the server's (tests/viewer/test_difference.py checks them against the raw
arrays); here the page must ask for them, show them, and say why where it cannot.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_stores import make_paired_store, make_store
from test_browser import CHROMIUM, browser, page, png_of, snap, url_state  # noqa: F401 - fixtures; skips without playwright

from dumpunet.viewer.server import start

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("minus")
    srv = start([make_store(root / "a.zarr", seed=0), make_store(root / "b.zarr", seed=3),
                 make_paired_store(root / "pair.zarr")])
    yield srv
    srv.shutdown()
    srv.server_close()


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
    assert minus["command"] == "(no single command writes this picture)" and minus["summary"]
    assert np.array_equal(png_of(three, minus["query"]), png_of(three, "block=OUT11&step=5&method=Red/Blue&minus=1"))
    assert not np.array_equal(png_of(three, minus["query"]), png_of(three, alone["query"]))

    page.click("#views [data-view=summary]")
    chart = picture(page, minus["query"])
    snap(page, "minus-02-summary")
    assert chart["error"] is None and min(chart["width"], chart["height"]) > 100
    assert "view=summary" in chart["query"] and "summary chart" in chart["where"]

    page.click("#views [data-view=attention]")
    refused = picture(page, chart["query"])
    assert refused["error"].startswith("the difference of two stores shows channel grids, final images and the "
                                       "summary chart, not the attention view")


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

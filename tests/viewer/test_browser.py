"""The viewer page in a real browser: Debian's chromium driven by Playwright.

Skipped with a reason where Playwright or chromium is missing (CI installs both: .ci/run and
the ``test`` extra). Screenshots of each step go to ``<tmp_path>/artifacts``.
"""

from __future__ import annotations

import io
import json
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import zarr
from PIL import Image
from viewer_stores import make_attention_store

from dumpunet.analyzer.grid import grid_shape, grid_size
from dumpunet.viewer.server import start

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TIMEOUT = 600_000  # ms: generous, for a loaded machine (a first render compiles numba kernels); waits end on events


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path):
    pg = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(TIMEOUT)
    pg.artifacts = tmp_path / "artifacts"  # type: ignore[attr-defined]
    pg.artifacts.mkdir()
    yield pg
    pg.close()
    assert errors == []  # no JavaScript error on the way


def shown(page) -> dict:
    """What the page shows now: the picture's query and size, the URL state, error and command text."""
    return page.evaluate("""() => ({
        query: document.getElementById('picture').dataset.query ?? null,
        width: document.getElementById('picture').naturalWidth,
        height: document.getElementById('picture').naturalHeight,
        src: document.getElementById('picture').src,
        error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        command: document.getElementById('command').textContent,
        settled: Number(document.body.dataset.settled ?? 0),
    })""")


def settle(page, before: dict | None = None) -> dict:
    """Wait until the page shows a view newer than ``before`` and no newer one is on its way.

    viewer.js numbers every view it is asked for (``data-requested``) and marks the one that
    shows, its picture drawn or its error up (``data-settled``): an event, not a time.
    """
    page.wait_for_function(
        """(n) => { const d = document.body.dataset;
                    return Number(d.settled ?? 0) > n && d.settled === d.requested; }""",
        arg=before["settled"] if before else 0)
    return shown(page)


def url_state(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def png_of(server, query: str) -> np.ndarray:
    with urllib.request.urlopen(server.url + "api/image?" + query) as res:
        return np.asarray(Image.open(io.BytesIO(res.read())).convert("RGB"))


def snap(page, name: str) -> None:
    page.screenshot(path=str(page.artifacts / f"{name}.png"))


def test_scrub_steps_pick_blocks_channels_and_colours(page, server):
    page.goto(server.url)
    first = settle(page)
    snap(page, "01-loaded")
    assert first["error"] is None
    assert "--blocks OUT11 --steps 3" in first["command"]
    assert (first["height"], first["width"]) == grid_size(*grid_shape(4, 8, 8), 8, 8)  # OUT11: 4 x 8x8

    page.locator("#step").fill("0")  # the slider's first position: step 1
    moved = settle(page, first)
    snap(page, "02-step1")
    assert url_state(page)["step"] == "1" and "--steps 1" in moved["command"]
    assert not np.array_equal(png_of(server, moved["query"]), png_of(server, first["query"]))

    page.click("#ladder [data-block=IN04]")
    block = settle(page, moved)
    snap(page, "03-IN04")
    assert url_state(page)["block"] == "IN04"
    assert (block["height"], block["width"]) == grid_size(*grid_shape(6, 4, 4), 4, 4)
    assert page.locator("#ladder .on").inner_text().startswith("IN04")

    page.keyboard.press("ArrowRight")  # the next block of the ladder
    nxt = settle(page, block)
    assert url_state(page)["block"] == "IN05"

    box = page.locator("#picture").bounding_box()  # the middle of channel 4's tile
    cols, rows = grid_shape(6, 4, 4)
    row, col = divmod(4, cols)
    page.mouse.click(box["x"] + box["width"] * (col * 5 + 2) / nxt["width"],
                     box["y"] + box["height"] * (row * 5 + 2) / nxt["height"])
    tile = settle(page, nxt)
    snap(page, "04-channel")
    assert url_state(page)["channel"] == "4" and "--channels 4" in tile["command"]
    assert (tile["height"], tile["width"]) == (4, 4)

    page.select_option("#method", "Red/Blue")
    red = settle(page, tile)
    snap(page, "05-red-blue")
    assert url_state(page)["method"] == "Red/Blue" and "--method Red/Blue" in red["command"]
    pix = png_of(server, red["query"])
    assert not np.array_equal(pix, png_of(server, tile["query"]))
    assert (pix[..., 1] == 0).all()  # Red/Blue has no green


def test_play_moves_the_step_and_pause_stops_it(page, server):
    page.goto(server.url + "?block=OUT11&step=1")
    first = settle(page)
    page.click("#play")
    page.wait_for_function("() => new URLSearchParams(location.search).get('step') === '2'")
    page.click("#play")
    assert page.evaluate("playing") is None and page.inner_text("#play") == "\u25b6"  # the timer is gone
    paused = settle(page, first)
    assert f"--steps {url_state(page)['step']} " in paused["command"]  # the picture shows where play stopped


def test_pca_colours_a_block_as_one_picture(page, server):
    page.goto(server.url + "?block=IN04&step=1")
    grid = settle(page)
    assert page.locator("#transform").is_visible()
    page.select_option("#method", "PCA")
    pca = settle(page, grid)
    snap(page, "06-pca")
    assert url_state(page)["method"] == "PCA" and pca["error"] is None
    assert "--method PCA --plain" in pca["command"] and "--transform" not in pca["command"]
    assert (pca["height"], pca["width"]) == (4, 4)  # IN04 is 6 x 4 x 4: one picture of all six channels
    assert page.locator("#transform").is_hidden() and page.locator("#h").is_hidden()  # a basis colours it
    box = page.locator("#picture").bounding_box()
    page.mouse.click(box["x"] + 2, box["y"] + 2)  # no tiles: a click picks no channel
    assert "channel" not in url_state(page) and page.evaluate("document.body.dataset.requested") == str(pca["settled"])
    page.select_option("#method", "Custom")
    back = settle(page, pca)
    assert page.locator("#transform").is_visible() and "--transform auto01" in back["command"]


def test_a_recording_in_progress_shows_its_steps_as_they_complete(page, tmp_path):
    path = make_attention_store(tmp_path / "live.zarr", finish=False)
    done = zarr.open_array(path / "runs/main/call_done", mode="r+")
    done[2] = 0  # step 3 still being written
    live = start([path])
    try:
        page.goto(live.url)
        first = settle(page)
        assert page.inner_text("#live") == "recording in progress: 2 steps so far"
        assert page.inner_text("#steplabel") == "step 2 of 3" and "--steps 2" in first["command"]
        done[2] = 1  # step 3 completes: the page's poll (every 1.5 s) finds it
        later = settle(page, first)  # the slider, left at the last step, follows
        snap(page, "16-live")
        assert page.inner_text("#live") == "recording in progress: 3 steps so far"
        assert page.inner_text("#steplabel") == "step 3 of 3" and "--steps 3" in later["command"]
        assert "step" not in url_state(page)
    finally:
        live.stop()


def test_a_bad_expression_shows_its_caret_message(page, server):
    page.goto(server.url + "?block=OUT11")
    first = settle(page)
    page.fill("#h", "v.__class__")  # applied after a 250 ms pause in typing
    bad = settle(page, first)
    snap(page, "06-bad-expression")
    text = page.inner_text("#error")
    assert bad["error"] == text
    assert text == "bad expression: H: attribute access '.__class__' is not allowed\n  v.__class__\n  ^^^^^^^^^^^"
    assert "Traceback" not in page.content()
    page.fill("#h", "(1-v)/3")
    fixed = settle(page, bad)
    assert fixed["error"] is None and "--h '(1-v)/3'" in fixed["command"]


def test_tokens_attention_and_the_word_heatmap(page, server):
    page.goto(server.url + "?view=attention")
    grid = settle(page)
    snap(page, "07-attention")
    assert url_state(page)["view"] == "attention" and "dumpunet attention" in grid["command"]
    assert page.locator("#tokens .token").all_inner_texts() == ["<start>", "a", "pink", "h", "air", "girl", "<end>"]
    page.click("#tokens .token >> text=pink")
    one = settle(page, grid)
    assert url_state(page)["token"] == "2" and "--tokens 2" in one["command"] and one["width"] < grid["width"]
    page.click("#views [data-view=heatmap]")
    heat = settle(page, one)
    snap(page, "08-heatmap")
    assert url_state(page)["view"] == "heatmap" and "dumpunet heatmap" in heat["command"] and "--word 2" in heat["command"]
    assert (heat["height"], heat["width"]) == (16, 16)  # the final image's size
    page.click("#views [data-view=query]")
    query = settle(page, heat)
    box = page.locator("#picture").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)
    clicked = settle(page, query)
    snap(page, "09-query")
    assert (float(url_state(page)["qx"]), float(url_state(page)["qy"])) == pytest.approx((0.25, 0.75), abs=0.05)
    assert "--query" in clicked["command"]


def test_each_head_is_offered_only_where_it_applies(page, server):
    page.goto(server.url + "?view=attention")
    attn = settle(page)
    head = page.locator('#auto_scope option[value="head"]')
    assert head.is_enabled()
    page.select_option("#auto_scope", "head")
    per_head = settle(page, attn)
    assert url_state(page)["auto_scope"] == "head" and per_head["error"] is None
    page.click("#views [data-view=grid]")  # a channel grid has no head rows: back to its default, no error
    grid = settle(page, per_head)
    assert grid["error"] is None and "auto_scope" not in url_state(page) and "--auto-scope" not in grid["command"]
    assert head.is_disabled() and page.locator("#auto_scope").input_value() == ""


def test_a_pair_toggles_base_layered_and_difference(page, server):
    page.goto(server.url + "?store=1")
    layered = settle(page)
    assert url_state(page)["pair"] == "layered"
    page.click("#mode [data-mode=diff]")
    diff = settle(page, layered)
    snap(page, "10-difference")
    assert url_state(page)["mode"] == "diff" and diff["command"].startswith("dumpunet diff")
    page.click("#mode [data-mode=base]")
    base = settle(page, diff)
    assert "--run base" in base["command"]
    assert not np.array_equal(png_of(server, base["query"]), png_of(server, layered["query"]))
    # the URL is the view: loading it again shows the same picture
    page.goto(page.url)
    again = settle(page)
    assert again["query"] == base["query"]
    structure = json.loads(urllib.request.urlopen(server.url + "api/structure?store=1").read())
    assert page.locator("#pair option").all_inner_texts() == ["(none)", *[p["label"] for p in structure["pairs"]]]


def test_a_second_store_beside_the_first(page, server):
    page.goto(server.url + "?block=OUT11&step=1&compare=1")
    first = settle(page)
    page.wait_for_function("() => document.getElementById('picture2').naturalWidth > 0")
    snap(page, "11-beside")
    assert url_state(page)["compare"] == "1" and "compare" not in first["query"]
    assert "--blocks OUT11 --steps 1" in first["command"] and "girl.zarr" in first["command"]
    beside = page.evaluate("""async () => { const img = document.getElementById('picture2');
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer()); return Array.from(bytes); }""")
    want = png_of(server, "store=1&block=OUT11&step=1")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(bytes(beside))).convert("RGB")), want)
    page.locator("#step").fill("1")  # step 2: recorded in girl.zarr, not in pair.zarr
    settle(page, first)
    page.wait_for_function("() => !document.getElementById('error2').hidden")
    assert page.inner_text("#error2").startswith("step 2 was not recorded")
    page.select_option("#compare", "")
    page.wait_for_function("() => document.getElementById('frame2').hidden")
    assert "compare" not in url_state(page)


def test_a_static_report_opens_from_disk(page, stores, tmp_path):
    from dumpunet.analyzer.pick import Pick
    from dumpunet.viewer.report import export_report

    out = tmp_path / "report"
    export_report(stores, out, Pick(steps="1,3"), progress=False)
    page.goto((out / "index.html").as_uri())
    first = settle(page)
    snap(page, "12-report")
    assert first["error"] is None and first["src"].startswith("file://")
    assert "--blocks OUT11 --steps 3" in first["command"]
    assert page.locator("#colour").is_hidden() and "static report" in page.inner_text("#live")
    want = np.asarray(Image.open(out / Path(urlsplit(first["src"]).path).name))
    assert (first["height"], first["width"]) == want.shape[:2]

    page.click("#ladder [data-block=IN04]")
    block = settle(page, first)
    assert url_state(page)["block"] == "IN04" and "--blocks IN04 --steps 3" in block["command"]
    page.locator("#step").fill("0")  # step 1: in the report
    one = settle(page, block)
    assert "--steps 1" in one["command"] and one["error"] is None
    page.locator("#step").fill("1")  # step 2: left out of the report
    page.wait_for_function("() => !document.getElementById('error').hidden")
    assert "not exported" in page.inner_text("#error")

    page.locator("#step").fill("2")
    page.click("#views [data-view=attention]")
    grid = settle(page, one)
    assert "dumpunet attention" in grid["command"] and grid["error"] is None
    page.click("#tokens .token >> text=pink")  # one token alone is a server view
    page.wait_for_function("() => !document.getElementById('error').hidden")
    page.click("#views [data-view=heatmap]")
    heat = settle(page, grid)
    snap(page, "13-report-heatmap")
    assert "--word 2" in heat["command"] and (heat["height"], heat["width"]) == (16, 16)

    page.goto((out / "index.html").as_uri() + "?store=1&mode=diff&step=1")  # the pair store: steps 1, 5, 10, 20
    diff = settle(page)
    snap(page, "14-report-difference")
    assert diff["error"] is None and diff["command"].startswith("dumpunet diff")

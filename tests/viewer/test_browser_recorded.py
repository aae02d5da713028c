"""The page on a real recording: tiny-sdxl with a negative prompt (needs torch and diffusers, and chromium).

test_browser_views.py checks the same on synthetic stores; here the block table, the token rows
and the attention layers are what the recorder writes.
"""

from __future__ import annotations

import pytest
from test_browser import CHROMIUM, browser, page, png_of, settle, snap, url_state  # noqa: F401 - fixtures

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import dumpunet  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402
from dumpunet.specs import SDXL_BLOCKS  # noqa: E402
from dumpunet.viewer.server import start  # noqa: E402

pytestmark = [pytest.mark.recorder,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")]


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    path = tmp_path_factory.mktemp("recorded") / "xl.zarr"
    pipe = build_tiny_pipeline("tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    with dumpunet.record(pipe, path, progress=False):
        pipe(prompt="a cute girl, pink hair", negative_prompt="blurry, bad hands", num_inference_steps=2,
             guidance_scale=7.0, height=64, width=64, generator=torch.Generator().manual_seed(1), output_type="np")
    srv = start([path])
    yield srv
    srv.stop()


def test_a_tiny_sdxl_recording_with_a_negative_prompt(page, xl):  # noqa: F811
    page.goto(xl.url)
    first = settle(page)
    snap(page, "30-tiny-sdxl")
    assert first["error"] is None and "--blocks OUT08 --steps 2" in first["command"]
    names = [b.get_attribute("data-block") for b in page.locator("#ladder .block").all()]
    assert sorted(names) == sorted(SDXL_BLOCKS) and len(names) == 19
    page.click("#ladder [data-block=IN04]")
    block = settle(page, first)
    assert url_state(page)["block"] == "IN04" and block["error"] is None and png_of(xl, block["query"]).std() > 0

    page.click("#views [data-view=attention]")
    attention = settle(page, block)
    assert page.locator("#tokens .token").all_inner_texts() == ["<start>", "a", "cute", "girl", ",", "pink", "hair", "<end>"]
    page.select_option("#guidance", "uncond")
    negative = settle(page, attention)
    assert page.inner_text("#tokens .half") == "negative prompt:"
    assert page.locator("#tokens .token").all_inner_texts() == ["<start>", "blurry", ",", "bad", "hands", "<end>"]
    page.click("#views [data-view=heatmap]")
    prompt = settle(page, negative)
    page.click("#tokens .token >> text=hands")
    heat = settle(page, prompt)
    snap(page, "31-tiny-sdxl-negative-heatmap")
    assert heat["error"] is None and "--word 4" in heat["command"] and "--guidance uncond" in heat["command"]
    assert (heat["height"], heat["width"]) == (64, 64)

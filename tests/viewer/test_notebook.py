"""Notebook display: the store's HTML summary, in-memory renders, and the viewer in a cell (``show()``)."""

from __future__ import annotations

import html
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

import dumpunet
from dumpunet.analyzer.grid import grid_shape, grid_size
from dumpunet.errors import SelectionError
from dumpunet.viewer import notebook
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


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as res:
        return res.read()


def test_show_embeds_the_viewer_in_an_iframe_served_on_loopback(stores):
    notebook.close()
    frame = dumpunet.open(stores[0]).show(block="IN04", step=2)
    other = dumpunet.view(stores[1], pair="layered", mode="diff", height=500)
    srv = notebook.server()
    try:
        assert srv.server_address[0] == "127.0.0.1" and srv.thread.is_alive()
        src = html.unescape(re.fullmatch(r'<iframe src="([^"]+)" width="100%" height="720" .*</iframe>',
                                         frame._repr_html_()).group(1))
        assert src == frame.url and src.startswith(srv.url)
        assert 'height="500"' in other._repr_html_()
        page = fetch(src).decode()
        assert "<title>dumpunet view</title>" in page and "/static/viewer.js" in page
        # the URL's state is the view: the store it names, and the fields given to show()
        for f, path, part in ((frame, stores[0], "render"), (other, stores[1], "diff")):
            query = urlsplit(f.url).query
            cmd = json.loads(fetch(srv.url + "api/command?" + query))["command"]
            assert cmd.startswith(f"dumpunet {part} {path} ")
        assert "store=1" in other.url and "store=" not in frame.url
        assert "--blocks IN04 --steps 2" in json.loads(fetch(srv.url + "api/command?" + urlsplit(frame.url).query))["command"]
        # one server per process: showing a store again reuses it and its index
        assert dumpunet.view(stores[0], block="IN04", step=2).url == frame.url and notebook.server() is srv
        assert [s["name"] for s in json.loads(fetch(srv.url + "api/stores"))["stores"]] == ["girl.zarr", "pair.zarr"]
    finally:
        notebook.close()
    assert not srv.thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        fetch(src)
    try:
        again = dumpunet.view(stores[1])
        assert notebook.server() is not srv and "store=" not in again.url  # a fresh server: its store 0
        assert fetch(again.url + "api/stores")
    finally:
        notebook.close()


def test_show_refuses_unknown_view_fields(stores):
    with pytest.raises(SelectionError, match="unknown view field 'colour'"):
        dumpunet.view(stores[0], colour="red")
    with pytest.raises(SelectionError, match="unknown view field 'store'"):
        dumpunet.view(stores[0], store=1)


def test_the_viewer_server_stops_at_exit_without_torch_or_ipython(stores):
    # atexit runs its handlers last-registered first: this one, registered before the viewer's, runs after it
    code = textwrap.dedent(f"""
        import atexit, sys, urllib.request
        import dumpunet
        shown = {{}}
        def report():
            srv = shown["server"]
            try:
                urllib.request.urlopen(srv.url, timeout=10)
                answered = True
            except OSError:
                answered = False
            print("after exit:", srv.thread.is_alive(), answered)
        atexit.register(report)
        frame = dumpunet.view({str(stores[0])!r})
        from dumpunet.viewer import notebook
        shown["server"] = notebook.server()
        print("before exit:", shown["server"].thread.is_alive(), len(urllib.request.urlopen(frame.url).read()) > 0)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers", "IPython"))
        print("heavy:", heavy)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["before exit: True True", "heavy: []", "after exit: False False"]

"""The viewer's HTTP server, driven with urllib and http.client against 127.0.0.1 (no browser)."""

from __future__ import annotations

import http.client
import io
import json
import shlex
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image
from viewer_stores import SIZE, make_attention_store
from waiting import BACKSTOP, wait_until

from dumpunet.analyzer.color.colorize import ColorSpec
from dumpunet.analyzer.color.spec import DIFF_COLOR
from dumpunet.analyzer.grid import grid_shape
from dumpunet.cli import main
from dumpunet.errors import ExpressionError
from dumpunet.viewer.server import start
from dumpunet.viewer.state import MODES


def get(server, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(server.url + path) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def raw_get(server, path: str) -> tuple[int, bytes]:
    """Send ``path`` byte for byte (urllib would not send some of the attacks)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=BACKSTOP)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, body


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def cli_picture(command: str, tmp_path: Path, prefix: str = "") -> np.ndarray:
    """Run a ``dumpunet ...`` line from /api/command and return the one PNG it wrote."""
    args = shlex.split(command)
    assert args[0] == "dumpunet"
    out = tmp_path / "cli"
    args[args.index("--out") + 1] = str(out)
    result = CliRunner().invoke(main, [*args[1:], "--quiet"] if args[1] in ("render", "diff", "attention") else args[1:])
    assert result.exit_code == 0, result.output
    files = sorted(p for p in out.glob(f"{prefix}*.png") if not p.name.startswith("summary"))
    assert len(files) == 1, files
    return np.asarray(Image.open(files[0]).convert("RGB"))


def test_binds_to_loopback_only(server):
    assert server.server_address[0] == "127.0.0.1"


def test_structure_lists_blocks_steps_layers_tokens_and_pairs(server):
    status, headers, body = get(server, "api/structure?store=0")
    assert status == 200 and headers["Content-Type"] == "application/json"
    info = json.loads(body)
    assert [b["name"] for b in info["blocks"]][:3] == ["IN00", "IN01", "IN02"] and len(info["blocks"]) == 25
    assert info["blocks"][0]["shape"] == [4, 8, 8] and info["blocks"][12]["name"] == "M00"
    (run,) = info["runs"]
    assert (run["name"], run["steps"], run["total_steps"], run["complete"]) == ("main", [1, 2, 3], 3, True)
    assert run["layers"] == [{"name": "IN01.attn2", "hw": [8, 8], "heads": 2, "cross": True},
                             {"name": "M00.attn2", "hw": [2, 2], "heads": 2, "cross": True},
                             {"name": "OUT11.attn1", "hw": [8, 8], "heads": 2, "cross": False}]
    assert run["tokens"] == {"cond": ["<start>", "a", "pink", "h", "air", "girl", "<end>"],
                             "uncond": ["<start>", "bad", "<end>"]}
    assert run["size"] == [SIZE, SIZE] and info["pairs"] == []
    pair = json.loads(get(server, "api/structure?store=1")[2])
    assert pair["pairs"] == [{"base": "base", "layered": "layered", "label": "layered"}]
    assert pair["default_run"] == "layered"
    stores = json.loads(get(server, "api/stores")[2])
    assert stores["stores"] == [{"index": 0, "name": "girl.zarr"}, {"index": 1, "name": "pair.zarr"}]
    assert stores["defaults"]["view"] == "grid" and stores["defaults"]["method"] == "Custom"


@pytest.mark.parametrize("query, prefix", [
    ("block=OUT11&step=2", ""),
    ("block=IN04&step=1&method=Red/Blue&transform=linear&clamp_min=-2&clamp_max=3", ""),
    ("block=OUT08&channel=5&method=White/Black&transform=sigmoid&gain=2&offset=0.5", ""),
    ("block=M00&average=2-norm&guidance=uncond&auto_scope=block", ""),
    ("block=OUT11&space=rgb&r=clip(v*2,0,1)&g=0&b=v*v", ""),
    ("block=IN04&step=1&method=PCA&transform=linear&h=v", ""),
    ("view=attention&layer=IN01.attn2&step=2", ""),
    ("view=attention&layer=IN01.attn2&step=2&auto_scope=channel", ""),
    ("view=attention&layer=M00.attn2&token=2&method=Red/Blue", ""),
    ("view=heatmap&token=4&step=2", "heatmap"),
    ("view=heatmap&token=2&layers=M00&alpha=0.8", "heatmap"),
    ("view=query&qx=0.2&qy=0.7", "querymap"),
    ("store=1&pair=layered&mode=diff&block=OUT11&step=5&method=Red/Blue&transform=linear", "diff-"),
    ("store=1&pair=layered&mode=base&block=IN04&step=10", ""),
    # channel subsets, final images and the negative prompt's tokens
    ("block=OUT08&channels=0,2-4&method=Red/Blue", ""),
    ("block=IN04&step=1&channels=1-5(%2B2)&average=mean", ""),
    ("block=IN04&step=1&channels=0-3&channel=5", ""),  # a clicked channel wins over the subset
    ("store=1&pair=layered&mode=diff&block=OUT11&step=5&channels=1-2", "diff-"),  # diff's own Auto scope is block
    ("store=1&pair=layered&mode=diff&block=IN04&step=10&space=rgb", "diff-"),  # diff's own r, g, b: a palette
    ("view=heatmap&token=1&guidance=uncond", "heatmap"),  # the negative prompt's "bad"
    ("view=final", "final-img"),
    ("store=1&pair=layered&mode=base&view=final", "final-img"),
    ("store=1&pair=layered&mode=diff&view=final&block=OUT11&step=5", "final-diff-norm"),
])
def test_a_served_png_equals_what_its_cli_command_writes(server, tmp_path, query, prefix):
    status, headers, body = get(server, "api/image?" + query)
    assert status == 200 and headers["Content-Type"] == "image/png", body
    command = json.loads(get(server, "api/command?" + query)[2])["command"]
    assert np.array_equal(pixels(body), cli_picture(command, tmp_path, prefix))


def test_command_of_the_default_view_names_the_last_step_and_block(server, stores):
    cmd = json.loads(get(server, "api/command")[2])
    assert cmd["command"] == (f"dumpunet render {stores[0]} --blocks OUT11 --steps 3 --images 0 --guidance cond "
                              "--method Custom --transform auto01 --space hsl --plain --out view")
    assert cmd["query"] == "block=OUT11&step=3" and cmd["file"] == "girl-grid-OUT11-step003-img0-cond.png"


def test_one_head_and_the_final_image(server):
    one = pixels(get(server, "api/image?view=attention&layer=IN01.attn2&head=1&token=2")[2])
    both = pixels(get(server, "api/image?view=attention&layer=IN01.attn2&token=2")[2])
    assert one.shape[0] < both.shape[0] and one.shape[1] == both.shape[1]  # one row of tiles instead of two
    assert np.array_equal(one[-32:], both[-32:])  # head 1 is the second row (8 x 8 maps, 4 times enlarged)
    assert "--heads 1 " in json.loads(get(server, "api/command?view=attention&head=1")[2])["command"]
    assert "--average mean " in json.loads(get(server, "api/command?view=attention&head=mean")[2])["command"]
    status, _, body = get(server, "api/image?view=attention&layer=IN01.attn2&head=2")
    assert status == 400 and json.loads(body)["error"].startswith("bad head selection of IN01.attn2: head 2 out of range 0..1")
    final = pixels(get(server, "api/image?view=final")[2])
    assert np.array_equal(final, zarr.open_array(server.paths[0] / "runs/main/images", mode="r")[0])


def test_pca_is_one_picture_whose_command_names_only_the_method(server):
    status, headers, body = get(server, "api/image?block=IN04&step=1&method=PCA&transform=sigmoid&gain=3")
    assert status == 200 and "X-Grid" not in headers  # no tiles: a click picks no channel
    assert pixels(body).shape[:2] == (4, 4)  # IN04 is 6 x 4 x 4: one 4 x 4 picture of all six channels
    assert body == get(server, "api/image?block=IN04&step=1&method=PCA")[2]  # the transform changes nothing
    command = json.loads(get(server, "api/command?block=IN04&step=1&method=PCA&transform=sigmoid")[2])["command"]
    assert "--method PCA --plain" in command and "--transform" not in command
    status, _, body = get(server, "api/image?block=IN04&step=1&method=PCA&channel=2")
    assert status == 400 and "every channel" in json.loads(body)["error"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """girl.zarr, other.zarr (other attention, features and final image) and a pair with attention."""
    root = tmp_path_factory.mktemp("compared")
    srv = start([make_attention_store(root / "girl.zarr"), make_attention_store(root / "other.zarr", seed=5),
                 make_attention_store(root / "pair.zarr", pair=True)])
    yield srv
    srv.stop()


@pytest.mark.parametrize("query, prefix", [
    ("view=attention&layer=IN01.attn2&head=1&token=2", ""),
    ("view=attention&layer=M00.attn2&head=mean&method=Red/Blue", ""),
    ("store=2&pair=layered&mode=diff&view=attention&layer=IN01.attn2&step=2", "diff-"),
    (("store=2&pair=layered&mode=diff&view=attention&layer=IN01.attn2&head=0&method=Red/Blue&transform=linear"
      "&clamp_min=-0.2&clamp_max=0.2"), "diff-"),
    ("store=2&pair=layered&mode=diff&view=attention&layer=M00.attn2&space=rgb&auto_scope=block", "diff-"),
    ("view=attention&layer=IN01.attn2&minus=1&head=mean", "diff-"),
    ("store=2&pair=layered&mode=base&view=attention&minus=1&step=2&token=5", "diff-"),
    ("store=2&pair=layered&mode=diff&view=heatmap&token=5&step=2", "diff-heatmap"),
    ("view=heatmap&token=4&minus=1&alpha=0.8&layers=IN01", "diff-heatmap"),
    ("store=2&pair=layered&mode=diff&view=query&qx=0.2&qy=0.7", "diff-querymap"),
    ("block=OUT11&step=2&minus=1", "diff-"),
    ("store=2&pair=layered&mode=diff&block=IN04&step=1", "diff-"),  # diff's colours by default
    # a difference's colours default to diff's; fields set keep their value, the rest stay diff's
    ("store=2&pair=layered&mode=diff&view=attention&layer=M00.attn2&head=mean&token=3", "diff-"),
    ("view=attention&layer=IN01.attn2&minus=1&step=2&transform=auto01", "diff-"),
    ("block=OUT11&step=2&minus=1&average=1-norm", "diff-"),  # a norm cannot be negative: white to red
    ("store=2&pair=layered&mode=diff&block=IN04&step=1&space=hsl&auto_scope=channel", "diff-"),
    ("view=final&minus=1", "final-diff-norm"),
])
def test_differences_and_heads_served_equal_what_their_cli_command_writes(compared, tmp_path, query, prefix):
    status, headers, body = get(compared, "api/image?" + query)
    assert status == 200 and headers["Content-Type"] == "image/png", body
    command = json.loads(get(compared, "api/command?" + query)[2])["command"]
    assert np.array_equal(pixels(body), cli_picture(command, tmp_path, prefix)), command


@pytest.mark.parametrize("query", ["store=2&pair=layered&mode=diff&view=attention&layer=IN01.attn2&step=2",
                                   "view=attention&layer=IN01.attn2&step=2&minus=1", "block=OUT11&step=2&minus=1"])
def test_a_difference_defaults_to_diffs_diverging_colours(compared, query):
    answer = json.loads(get(compared, "api/command?" + query)[2])
    assert answer["color"] == json.loads(DIFF_COLOR.to_json())
    assert "--transform autosym --space rgb --plain" in answer["command"]  # diff's r, g, b and Auto scope: no option
    tiles = pixels(get(compared, "api/image?" + query)[2]).astype(int)
    drawn = tiles[(tiles[..., 0] != tiles[..., 1]) | (tiles[..., 1] != tiles[..., 2])]  # not the grey labels and gaps
    # blue (-) white (0) red (+): a pixel is saturated in red or in blue, with green at most the weaker of the two
    assert ((drawn[:, 0] == 255) | (drawn[:, 2] == 255)).all() and (drawn[:, 1] <= drawn[:, [0, 2]].min(axis=1) + 1).all()
    assert ((drawn[:, 0] == 255) & (drawn[:, 2] < 128)).any() and ((drawn[:, 2] == 255) & (drawn[:, 0] < 128)).any()
    # a colour field set keeps its value when the difference is turned off; the fields left empty follow the view
    linear = json.loads(get(compared, "api/command?" + query + "&transform=linear")[2])["color"]
    assert (linear["transform"], linear["space"]) == ("linear", "rgb")
    undone = query.replace("mode=diff", "mode=layered").replace("&minus=1", "")
    alone = json.loads(get(compared, "api/command?" + undone + "&transform=linear")[2])["color"]
    assert (alone["transform"], alone["space"], alone["h"]) == ("linear", "hsl", ColorSpec().h)


@pytest.mark.parametrize("view", ["view=attention&layer=IN01.attn2", "view=heatmap&token=5", "view=query"])
def test_a_pairs_difference_of_attention_views_is_another_picture_than_either_run(compared, view):
    shown = {mode: get(compared, f"api/image?store=2&pair=layered&step=2&mode={mode}&{view}") for mode in MODES}
    assert all(status == 200 for status, _, _ in shown.values()), shown
    assert len({body for _, _, body in shown.values()}) == 3
    command = json.loads(get(compared, f"api/command?store=2&pair=layered&step=2&mode=diff&{view}")[2])["command"]
    assert " --pair layered " in command and "--run" not in command
    minus = json.loads(get(compared, f"api/command?step=2&minus=1&{view}")[2])["command"]
    assert minus.split()[2:4] == [str(compared.paths[0]), str(compared.paths[1])]  # dumpunet VIEW A B ...


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2f..%2fetc%2fpasswd",
    "/../../../etc/passwd",
    "//etc/passwd",
    "/static//etc/passwd",
    "/static/viewer.js/../../server.py",
    "/static/__init__.py",
    "/api/structure?store=../../etc",
    "/api/structure?store=2",
    "/api/image?store=-1",
    "/api/image?store=/tmp",
])
def test_nothing_outside_the_named_stores_and_page_is_served(server, path):
    status, body = raw_get(server, path)
    assert status == 404, (path, body[:100])
    assert set(json.loads(body)) == {"error"}


def test_the_page_and_its_files_are_served(server):
    status, headers, body = get(server, "")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/static/viewer.js" in body
    assert get(server, "static/viewer.js")[1]["Content-Type"].startswith("text/javascript")


def test_a_bad_expression_answers_its_caret_message(server):
    status, _, body = get(server, "api/image?block=OUT11&h=v.__class__")
    assert status == 400
    with pytest.raises(ExpressionError) as err:
        ColorSpec(h="v.__class__")
    assert json.loads(body) == {"error": str(err.value)}
    assert json.loads(body)["error"] == ("bad expression: H: attribute access '.__class__' is not allowed\n"
                                         "  v.__class__\n  ^^^^^^^^^^^")
    status, _, body = get(server, "api/image?block=IN99")
    assert status == 400 and json.loads(body)["error"].startswith("unknown block 'IN99'")
    status, _, body = get(server, "api/image?colour=red")
    assert status == 400 and json.loads(body)["error"].startswith("unknown view parameter 'colour'")


def test_views_are_cached_by_state(server):
    query = "api/image?block=IN02&step=1&method=Red/Blue"
    first = get(server, query)
    again = get(server, query)
    assert (first[1]["X-Cache"], again[1]["X-Cache"]) == ("miss", "hit") and first[2] == again[2]
    # the same view spelled differently (defaults given, step resolved) is the same entry
    assert get(server, "api/image?block=IN02&step=1&method=red/blue&image=0")[1]["X-Cache"] in ("hit", "miss")
    other = get(server, query + "&gain=2&transform=sigmoid")
    assert other[1]["X-Cache"] == "miss" and other[2] != first[2]
    grid = get(server, "api/image?block=IN04&step=1")[1]["X-Grid"]
    assert grid == ",".join(map(str, (*grid_shape(6, 4, 4), 4, 4)))  # 6 channels of 4x4: columns, rows, tile


def test_a_moving_step_slider_gets_the_next_step_rendered_ahead(stores):
    server, plain = start(stores[:1]), start(stores[:1], ahead=False)
    try:
        query = "api/image?block=OUT11&method=Red/Blue&step="
        assert get(server, query + "1")[1]["X-Cache"] == "miss"
        assert server._ahead_thread is None  # a first view is not a slider move
        assert get(server, query + "2")[1]["X-Cache"] == "miss"  # the slider moved up: step 3 is drawn ahead
        step3 = server.state({"block": "OUT11", "method": "Red/Blue", "step": "3"})[1]
        wait_until(lambda: step3 in server.cache, what="step 3 rendered ahead")
        first, again = get(server, query + "3"), get(server, query + "3")
        assert (first[1]["X-Cache"], again[1]["X-Cache"]) == ("ahead", "hit") and first[2] == again[2]
        rendered = get(plain, query + "3")
        assert rendered[1]["X-Cache"] == "miss" and rendered[2] == first[2]  # the very PNG of a render on request
        for step in (1, 2):  # the slider moves there too, without rendering anything ahead
            get(plain, query + str(step))
        assert plain._ahead_thread is None
    finally:
        for srv in (server, plain):
            srv.stop()


def test_only_a_step_change_renders_ahead(stores):
    server = start(stores[:1])
    try:
        get(server, "api/image?block=OUT11&step=1")
        get(server, "api/image?block=IN02&step=2")  # the block changed too
        get(server, "api/image?block=IN02&step=2&gain=2")  # the step did not change
        get(server, "api/image?view=heatmap&token=2&step=1")
        get(server, "api/image?view=heatmap&token=2&step=2")  # a heatmap sums every step: none is drawn ahead
        get(server, "api/image?block=IN02&step=2&gain=2")
        assert server._ahead_thread is None
        get(server, "api/image?block=IN02&step=3&gain=2")  # 2 -> 3: the last step, nothing follows
        assert server._ahead_thread is None
    finally:
        server.stop()


def test_a_recording_in_progress_shows_new_steps(tmp_path):
    path = make_attention_store(tmp_path / "live.zarr", finish=False)
    done = zarr.open_array(path / "runs/main/call_done", mode="r+")
    done[2] = 0  # step 3 still being written
    server = start([path])
    try:
        info = json.loads(get(server, "api/structure?store=0")[2])
        assert (info["runs"][0]["steps"], info["runs"][0]["incomplete_steps"], info["runs"][0]["complete"]) == ([1, 2], [3], False)
        assert json.loads(get(server, "api/command")[2])["query"] == "block=OUT11&step=2"
        status, _, body = get(server, "api/image?step=3")
        assert status == 400 and "step 3 was not completely written" in json.loads(body)["error"]
        done[2] = 1
        again = json.loads(get(server, "api/structure?store=0")[2])
        assert again["runs"][0]["steps"] == [1, 2, 3] and again["generation"] != info["generation"]
        assert get(server, "api/image?step=3")[0] == 200
        assert json.loads(get(server, "api/command")[2])["query"] == "block=OUT11&step=3"
    finally:
        server.stop()


def test_view_command_help_a_missing_store_and_a_busy_port(tmp_path, server, stores):
    result = CliRunner().invoke(main, ["view", str(stores[0]), "--port", str(server.server_address[1]), "--no-browser"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot serve on 127.0.0.1:{server.server_address[1]}: Address already in use" in result.output
    result = CliRunner().invoke(main, ["view", "--help"])
    assert result.exit_code == 0 and "dumpunet view girl.zarr --port 8765 --no-browser" in result.output
    result = CliRunner().invoke(main, ["view", str(tmp_path / "nothing.zarr"), "--no-browser"])
    assert result.exit_code == 1 and "Traceback" not in result.output and "nothing.zarr" in result.output


def test_dumpunet_view_serves_until_ctrl_c(stores):
    import os
    import re
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-m", "dumpunet.cli", "view", str(stores[0]), "--no-browser"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", line).group(1)
        with urllib.request.urlopen(url + "api/stores", timeout=BACKSTOP) as res:
            assert json.loads(res.read())["stores"] == [{"index": 0, "name": "girl.zarr"}]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=BACKSTOP) == 0
        assert "dumpunet view: stopped" in proc.stderr.read()
    finally:
        proc.kill()

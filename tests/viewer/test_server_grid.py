"""The server's channel subsets: a smaller grid whose tiles name their channels, a caret message for a bad spec (served bytes against CLI commands: test_server)."""

from __future__ import annotations

import json

import pytest
from test_server import get, pixels

from dumpunet.analyzer.grid import grid_shape
from dumpunet.errors import SpecError
from dumpunet.specs import parse_ints


def test_a_channel_subset_is_a_smaller_grid_whose_tiles_name_their_channels(server):
    status, headers, body = get(server, "api/image?block=OUT08&channels=5,0-2")  # OUT08: 6 x 8 x 8
    assert status == 200 and headers["X-Channels"] == "0-2,5"
    assert headers["X-Grid"] == ",".join(map(str, (*grid_shape(4, 8, 8), 8, 8)))
    full = get(server, "api/image?block=OUT08")
    assert "X-Channels" not in full[1] and full[1]["X-Grid"] == ",".join(map(str, (*grid_shape(6, 8, 8), 8, 8)))
    assert pixels(body).shape != pixels(full[2]).shape
    cmd = json.loads(get(server, "api/command?block=OUT08&channels=5,0-2")[2])
    assert "--channels 5,0-2 " in cmd["command"] and cmd["query"].endswith("channels=5%2C0-2")
    assert cmd["file"] == "girl-grid-OUT08-ch5-0-2-step003-img0-cond.png"  # not the whole grid's name


def test_a_bad_channel_subset_answers_its_caret_message(server):
    status, _, body = get(server, "api/image?block=OUT11&channels=1-9")  # OUT11 has channels 0..3
    with pytest.raises(SpecError) as want:
        parse_ints("1-9", 0, 3, noun="channel", what="channel spec for OUT11")
    assert status == 400 and json.loads(body) == {"error": str(want.value)}
    assert str(want.value).splitlines()[1:] == ["  1-9", "    ^"]

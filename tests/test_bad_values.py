"""Bad values on the command line: one readable line, a non-zero exit, no traceback, nothing written.

Each case was a traceback, a hang, a huge allocation or a silently wrong result before
(issue 13, "Bad values that still crash" and "Silent wrong results").
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from synthetic_stores import make_store
from test_attention_view import store  # noqa: F401 - the synthetic attention store fixture

from dumpunet.cli import main

LONG = "x" * 5000


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line(res, message: str, *, code: int = 1) -> None:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    assert res.output == f"Error: {message}\n"


@pytest.fixture(scope="module")
def girl(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("stores") / "girl.zarr")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alpha", "nan", "--word", "pink"], "alpha must be a number between 0 and 1, got nan"),
        (["--word", ""], "--word needs a word of the prompt or token indices, got ''"),
        (["--word", " , "], "--word needs a word of the prompt or token indices, got ' , '"),
        (["--word", LONG], f"--word '{'x' * 39}…' is 5000 characters long; a word of the prompt is at most 200"),
        (["--word", "y" * 150], (f"'{'y' * 39}…' is not a word of the prompt; its tokens are: a pink h air girl "
                                 "(or give token indices 0..9)")),
        (["--query", "5,-5"], "query point (5.0, -5.0) must be fractions of the image in [0, 1]"),
        (["--query", "nan,0.5"], "query point (nan, 0.5) must be fractions of the image in [0, 1]"),
    ],
)
def test_heatmap(store, tmp_path, args, message):  # noqa: F811 - the fixture
    out = tmp_path / "h"
    assert_one_line(run_cli("heatmap", store.path, *args, "--out", out), message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--query", "nan,nan"], "query point (nan, nan) must be fractions of the image in [0, 1]"),
        (["--query", "5,-5"], "query point (5.0, -5.0) must be fractions of the image in [0, 1]"),
        (["--query", "inf,0"], "query point (inf, 0.0) must be fractions of the image in [0, 1]"),
    ],
)
def test_attention_query(store, tmp_path, args, message):  # noqa: F811 - the fixture
    out = tmp_path / "a"
    assert_one_line(run_cli("attention", store.path, "--layers", "IN01.attn1", *args, "--out", out), message)
    assert not out.exists()


@pytest.mark.parametrize("command", ["render", "attention"])
def test_a_huge_scale_is_a_bad_option(girl, store, tmp_path, command):  # noqa: F811 - the fixture
    res = run_cli(command, girl if command == "render" else store.path, "--scale", "100000", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[-1] == "Error: Invalid value for '--scale': 100000 is not in the range 1<=x<=64."


def test_a_grid_over_the_pixel_limit_is_refused_before_it_is_allocated(girl, tmp_path, monkeypatch):
    from dumpunet.analyzer import grid

    monkeypatch.setattr(grid, "MAX_GRID_PIXELS", 4000)  # IN00 at scale 4: 2x2 tiles of 32x32, 65x65 pixels
    out = tmp_path / "r"
    res = run_cli("render", girl, "--blocks", "IN00", "--steps", "1", "--scale", "4", "--quiet", "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error: a grid of ") and res.output.endswith(
        " pixels is larger than the limit of 4000 pixels; lower --scale or select fewer channels\n")
    assert not out.exists() or not list(out.glob("*.png"))


@pytest.mark.parametrize(
    "text", ["-" * 990 + "v", "+-" * 490 + "v", "abs(" * 150 + "v" + ")" * 150],
)
def test_deeply_nested_expressions_are_one_caret_message(girl, tmp_path, text):
    res = run_cli("render", girl, "--method", "Custom", "--h", text, "--out", tmp_path / "r")
    assert res.exit_code == 1 and "Traceback" not in res.output and "RecursionError" not in res.output
    head, shown, caret = res.output.rstrip("\n").split("\n")
    assert head in ("Error: bad expression: H: expression nests more than 100 levels deep",
                    "Error: bad expression: H: too many nested parentheses")
    assert len(shown) < 110 and set(caret.strip()) == {"^"}


# ----------------------------------------------------------------------------- record and sweep

RECORD = ["--sampling-steps", "2", "--width", "64", "--height", "64", "--quiet"]


@pytest.mark.recorder
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["record", "--sampling-steps", "1000000000"], "--sampling-steps must be between 1 and 10000, got 1000000000"),
        (["record", "--seed", "99999999999999999999999"],
         "--seed must be between -1 and 18446744073709551615, got 99999999999999999999999"),
        (["record", "--device", "meta"], "device 'meta' holds no data; choose cpu, cuda or mps"),
        (["record", "--cfg", "inf"], "--cfg must be between 0.0 and 100.0, got inf"),
        (["record", "--cfg", "1e308"], "--cfg must be between 0.0 and 100.0, got 1e+308"),
        (["record", "--cfg", "nan"], "--cfg must be between 0.0 and 100.0, got nan"),
        (["record", "--width", "800000"], "--width must be between 8 and 8192, got 800000"),
        (["record", "--record-steps", "1-999999999"],
         "bad --record-steps: step 999999999 out of range 1..2\n  1-999999999\n    ^^^^^^^^^"),
        (["record", "--query-region", "0,0,0.5,0.5"],
         "--query-region only filters self-attention maps; add --self-attention"),
        (["record", "--attention-blocks", "IN00"],
         ("--attention-blocks 'IN00' selects no block with cross-attention; blocks with it: IN01, IN02, IN04, IN05, "
          "IN07, IN08, M00, OUT03, OUT04, OUT05, OUT06, OUT07, OUT08, OUT09, OUT10, OUT11")),
        (["sweep", "--insert", ""], "--insert is empty: every run would equal the base run; give the text to insert"),
    ],
)
def test_record(tmp_path, args, message):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    out = tmp_path / "x.zarr"
    command, *rest = args
    assert_one_line(run_cli(command, *RECORD, *rest, "--out", out), message)
    assert not out.exists()


@pytest.mark.recorder
def test_the_largest_seed_records(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import dumpunet

    out = tmp_path / "s.zarr"
    res = run_cli("record", *RECORD, "--blocks", "M00", "--seed", "18446744073709551615", "--out", out)
    assert res.exit_code == 0, res.output
    assert dumpunet.open(out).run().info.seeds == (18446744073709551615,)

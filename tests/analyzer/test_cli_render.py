"""The render and export commands, run exactly as the documentation writes them."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import click
from click.testing import CliRunner
from PIL import Image

import dumpunet
from dumpunet.cli import main

ROOT = Path(__file__).resolve().parents[2]


def readme_commands(prefix: str) -> list[str]:
    """The README's shell lines that start with ``prefix``, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        lines += [line.split("  #")[0].strip() for line in joined.splitlines() if line.startswith(prefix)]
    return lines


EXAMPLES = [line.removeprefix("dumpunet ") for line in readme_commands("dumpunet render girl.zarr")
            + readme_commands("dumpunet export girl.zarr") if "--layers" not in line]
"""The render and export lines of the README's walkthrough, as written there (those of attention
layers run in test_parity_outputs, on a store with attention)."""

EXPECTED = {
    '--blocks OUT11 --steps 20 --method "White/Black" --transform sigmoid --out': [
        "OUT11-step020-img0-cond-wb-sigmoid-g1-o0.png"],
    '--blocks "IN00-OUT11(+2)" --steps "1,5,10"': 39,  # 13 blocks x 3 steps
    "--blocks OUT11 --steps 20 --plain": ["OUT11-step020-img0-cond-hsl-auto01.png"],
    "--blocks M00 --average 2-norm --with-grid": 8,  # 4 recorded steps x (average, grid)
    "--auto-scope run --animate png": ["OUT11-steps1_5_10_20-img0-cond-hsl-auto01-run.png"],
    "--average mean --mosaic": ["mosaic-steps1_5_10_20-img0-cond-avg-mean-hsl-auto01.png"],
    "--blocks OUT11 --method pca --pca-basis basis.npz": 4,
    "--blocks OUT11 --steps 20 --format bin": 4,  # one .bin per channel of the synthetic OUT11
}
"""What each README example writes from the synthetic store (file names or a count)."""


def expected(line: str):
    (hit,) = [v for k, v in EXPECTED.items() if k in line]
    return hit


@pytest.fixture
def here(girl, tmp_path, monkeypatch):
    (tmp_path / "girl.zarr").symlink_to(girl, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_every_readme_example_has_an_expectation():
    assert len(EXAMPLES) >= 5
    assert all(len([k for k in EXPECTED if k in line]) == 1 for line in EXAMPLES), EXAMPLES


@pytest.mark.parametrize("line", EXAMPLES)
def test_documented_examples_work_verbatim(here, line):
    res = run(*shlex.split(line))
    assert res.exit_code == 0, res.output
    folder = here / ("dump" if line.startswith("export") else "renders")
    listed = [e["file"] for e in json.loads((folder / "manifest.json").read_text())["files"]]
    assert sorted(listed + ["manifest.json"]) == sorted(p.name for p in folder.iterdir())
    want = expected(line)
    assert listed == want if isinstance(want, list) else len(listed) == want
    noun = ("file" if line.startswith("export") else "PNG file") + ("s" if len(listed) > 1 else "")
    assert res.stderr.splitlines()[-1] == f"wrote {len(listed)} {noun} to {folder.name} (parameters in manifest.json)"


def test_cli_and_api_write_the_same_pixels(here):
    assert run(*shlex.split(EXAMPLES[0])).exit_code == 0
    (f,) = dumpunet.render("girl.zarr", dumpunet.Pick(blocks="OUT11", steps="20"),
                           dumpunet.ColorSpec(method="White/Black", transform="sigmoid"), out="api", progress=False)
    with Image.open(f) as a, Image.open(here / "renders" / f.path.name) as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_json_prints_the_manifest_entries_and_quiet_silences_the_bar(here):
    res = run("render", "girl.zarr", "--blocks", "M00", "--steps", "20", "--out", "r", "--json", "--quiet", "--input")
    assert res.exit_code == 0, res.output
    entries = json.loads(res.stdout)
    assert [e["file"] for e in entries] == ["M00-input-step020-img0-cond-hsl-auto01.png"]
    assert entries[0]["which"] == "input"
    assert res.stderr == ""


@pytest.mark.parametrize("command", ["render", "export"])
def test_help_carries_a_runnable_example(command):
    res = run(command, "--help")
    assert res.exit_code == 0
    example = next(e for e in EXAMPLES if e.startswith(command)).split(" --")[0]
    assert f"dumpunet {example}" in res.output


def test_mistakes_exit_1_with_one_line_and_bad_options_exit_2(here):
    res = run("render", "girl.zarr", "--blocks", "IN12", "--out", "r")
    assert res.exit_code == 1
    assert res.output == "Error: bad block spec: unknown block 'IN12' (this model has IN00..OUT11)\n  IN12\n  ^^^^\n"
    assert not (here / "r").exists()
    res = run("render", "girl.zarr", "--steps", "20", "--h", "1/(v", "--out", "r")
    assert res.exit_code == 1 and res.output.startswith("Error: bad expression: H: '(' was never closed")
    res = run("export", "girl.zarr", "--steps", "7", "--out", "d")
    assert (res.exit_code, res.output) == (1, "Error: step 7 was not recorded (recorded steps: 1,5,10,20)\n")
    res = run("render", "girl.zarr", "--method", "rainbow", "--out", "r")
    assert res.exit_code == 2 and "Invalid value for '--method'" in res.output
    res = run("render", "missing.zarr", "--out", "r")
    assert res.exit_code == 1 and res.output.startswith("Error: no store at") and "Traceback" not in res.output


SLOW_RENDER = """
import sys, time
from dumpunet.analyzer import render
real = render.encode_png
def slow(image, **kw):
    time.sleep(0.05)
    return real(image, **kw)
render.encode_png = slow
from dumpunet.cli import main
sys.exit(main(["render", sys.argv[1], "--out", sys.argv[2], "--jobs", "2"]))
"""


def test_sigterm_mid_render_leaves_whole_files_listed_in_the_manifest(girl, tmp_path):
    import signal
    import subprocess
    import sys

    from waiting import BACKSTOP, wait_until

    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RENDER, str(girl), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(list(out.glob("*.png"))) >= 3, proc=proc, what="3 PNG files")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=BACKSTOP)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    names = sorted(p.name for p in out.iterdir())
    pngs = [n for n in names if n.endswith(".png")]
    assert names == sorted(pngs + ["manifest.json"])  # no temporary files
    assert 3 <= len(pngs) < 100
    listed = [e["file"] for e in json.loads((out / "manifest.json").read_text())["files"]]
    assert listed == pngs


def test_every_command_spells_and_explains_an_option_the_same_way():
    from dumpunet.cli import main

    seen: dict[str, set] = {}
    for name in ("render", "export", "diff", "attention", "heatmap"):
        for p in main.commands[name].params:
            if isinstance(p, click.Option) and p.name != "help":
                seen.setdefault(p.name, set()).add((p.opts[0], p.help))
    assert {k: v for k, v in seen.items() if len(v) != 1} == {}
    assert seen["which"] == {("--input", "Block inputs (recorded with --inputs) instead of outputs.")}
    assert seen["clamp_min"] == {("--clamp-min", "Linear: lower clamp.")}
    # the defaults a view starts from are values too: diff's symmetric Auto, attention's head rows;
    # one hue for all
    params = {c: {p.name: p for p in main.commands[c].params} for c in ("render", "diff", "attention")}
    assert [params[c]["transform"].default for c in params] == ["auto01", "autosym", "auto01"]
    assert [params[c]["auto_scope"].default for c in params] == ["channel", "block", "head"]
    assert {params[c]["h"].default for c in params} == {"(2+v)/3"}
    assert "PCA" not in params["attention"]["method"].type.choices

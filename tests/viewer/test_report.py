"""``dumpunet view --export``: the static report folder (its page is driven in test_browser.py)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from viewer_stores import make_attention_store

from dumpunet.analyzer.pick import Pick
from dumpunet.cli import main
from dumpunet.errors import DumpUnetError
from dumpunet.store import open_store
from dumpunet.viewer.report import export_report, view_key
from dumpunet.viewer.state import ViewState
from dumpunet.viewer.structure import resolve
from dumpunet.viewer.views import render_view


def _data(out: Path) -> dict:
    text = (out / "report.js").read_text()
    assert text.startswith("window.DUMPUNET_REPORT = ") and text.endswith(";\n")
    return json.loads(text[len("window.DUMPUNET_REPORT = "):-2])


@pytest.fixture(scope="module")
def report(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    export_report(stores, out, progress=False)
    return out


def test_every_view_of_the_report_is_the_viewers_picture(report, stores):
    views = _data(report)["views"]
    kinds = {dict(parse_qsl(k))["view"] for k in views}
    assert kinds == {"grid", "attention", "heatmap", "summary", "final"}
    opened = [open_store(p) for p in stores]
    for n, (key, entry) in enumerate(sorted(views.items())):
        if n % 9:
            assert "error" not in entry or "minus=" in key, (key, entry)
            continue  # a sample: each check renders the view again
        if "error" in entry:  # these two stores hold other blocks and steps: their A - B says what differs
            state = ViewState.from_query(dict(parse_qsl(key)))
            assert state.minus >= 0, (key, entry)
            with pytest.raises(DumpUnetError) as err:
                render_view(opened[state.store], resolve(opened[state.store], state), opened[state.minus])
            assert str(err.value) == entry["error"]
            continue
        state = ViewState.from_query(dict(parse_qsl(entry["query"])))
        minus = opened[state.minus] if state.minus >= 0 else None
        want = render_view(opened[state.store], state, minus)
        got = np.asarray(Image.open(report / entry["file"]))
        assert np.array_equal(got, want), key
        assert view_key(state) == key


def test_the_report_covers_runs_pairs_blocks_steps_layers_and_tokens(report, stores):
    views = _data(report)["views"]
    girl = open_store(stores[0])
    r = girl.run()
    for step in r.steps:
        for block in r.recorded("output"):
            for average in ("", "mean", "1-norm", "2-norm"):
                assert view_key(ViewState(run=r.name, block=block, step=step, average=average)) in views
        for token in range(r.token_row().length):
            assert view_key(ViewState(view="heatmap", run=r.name, token=token, step=step)) in views
    pair = open_store(stores[1])
    for p in pair.pairs:
        key = view_key(ViewState(store=1, pair=p.label, mode="diff", block="OUT11", step=pair.steps[-1]))
        assert key in views


def test_a_pairs_difference_of_attention_and_word_heatmaps_is_in_the_report(tmp_path):
    store = make_attention_store(tmp_path / "pair.zarr", pair=True)
    out = tmp_path / "report"
    export_report([store], out, Pick(blocks="IN01", steps="2"), progress=False)
    views = _data(out)["views"]
    opened = open_store(store)
    wanted = [ViewState(view="attention", pair="layered", mode="diff", layer="IN01.attn2", head=h, step=2)
              for h in ("all", "mean")]
    wanted += [ViewState(view="heatmap", pair="layered", mode="diff", token=t, step=2) for t in (2, 5)]
    for state in wanted:
        entry = views[view_key(state)]
        assert "error" not in entry, entry
        assert np.array_equal(np.asarray(Image.open(out / entry["file"])), render_view(opened, state))
        assert f" {store} --pair layered " in entry["command"]
    layered = views[view_key(ViewState(view="attention", run="layered", layer="IN01.attn2", step=2))]
    assert (out / layered["file"]).read_bytes() != (out / views[view_key(wanted[0])]["file"]).read_bytes()


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[list[Path], Path]:
    """Two stores of one layout (other attention, features and final image), exported with a channel subset."""
    root = tmp_path_factory.mktemp("two")
    paths = [make_attention_store(root / "girl.zarr"), make_attention_store(root / "other.zarr", seed=5)]
    out = root / "report"
    export_report(paths, out, Pick(blocks="IN01,IN04,OUT11", steps="2,3", channels="1-2"), progress=False)
    return paths, out


def test_two_stores_report_each_minus_the_other(two):
    paths, out = two
    views = _data(out)["views"]
    opened = [open_store(p) for p in paths]
    kinds = {dict(parse_qsl(k))["view"] for k in views if "minus=" in k}
    assert kinds == {"grid", "attention", "summary", "final"}  # word heatmaps of two stores: the server's
    for store, minus in ((0, 1), (1, 0)):
        wanted = [ViewState(store=store, minus=minus, run="main", view="final")]
        wanted += [ViewState(store=store, minus=minus, run="main", block=b, channels="1-2", average=a, step=s)
                   for b in ("IN04", "OUT11") for a in ("", "2-norm") for s in (2, 3)]
        wanted += [ViewState(store=store, minus=minus, run="main", view="attention", layer="IN01.attn2", head=h, step=3)
                   for h in ("all", "mean")]
        wanted += [ViewState(store=store, minus=minus, run="main", view="summary", step=s) for s in (2, 3)]
        for state in wanted:
            entry = views[view_key(state)]
            assert "error" not in entry, entry
            resolved = ViewState.from_query(dict(parse_qsl(entry["query"])))
            assert resolved.minus == minus and view_key(resolved) == view_key(state)
            want = render_view(opened[store], resolved, opened[minus])
            assert np.array_equal(np.asarray(Image.open(out / entry["file"])), want), entry
            assert entry["command"].split()[2:4] == [str(paths[store]) + ":main", str(paths[minus])]
    a_b = views[view_key(ViewState(minus=1, run="main", block="OUT11", channels="1-2", step=3))]
    b_a = views[view_key(ViewState(store=1, minus=0, run="main", block="OUT11", channels="1-2", step=3))]
    alone = views[view_key(ViewState(run="main", block="OUT11", channels="1-2", step=3))]
    assert len({(out / e["file"]).read_bytes() for e in (a_b, b_a, alone)}) == 3
    assert "--channels 1-2" in a_b["command"] and a_b["grid"][:2] == [2, 1]  # two tiles: channels 1 and 2


def test_a_channel_subset_is_what_the_report_grids_show_and_open_on(two):
    _, out = two
    data = _data(out)
    assert data["channels"] == "1-2"
    grids = [dict(parse_qsl(k)) for k in data["views"] if "view=grid" in k]
    assert grids and {g["channels"] for g in grids} == {"1-2"}
    assert {g["block"] for g in grids} == {"IN01", "IN04", "OUT11"}
    entry = data["views"][view_key(ViewState(run="main", block="IN04", channels="1-2", step=2))]
    assert entry["grid"][:2] == [2, 1] and "--channels 1-2" in entry["command"]


def test_a_bad_channel_subset_writes_nothing(stores, tmp_path):
    res = CliRunner().invoke(main, ["view", str(stores[0]), "--export", str(tmp_path / "r"), "--channels", "1-"])
    assert res.exit_code == 1 and "channel spec" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_the_report_is_self_contained_and_listed_in_its_manifest(report):
    files = {p.name for p in report.iterdir()}
    manifest = json.loads((report / "manifest.json").read_text())
    assert {e["file"] for e in manifest["files"]} | {"manifest.json"} == files
    html = (report / "index.html").read_text()
    assert '<script src="report.js"></script>' in html and "/static/" not in html and "http" not in html
    for entry in _data(report)["views"].values():
        assert "file" in entry or "error" in entry
        if "file" in entry:
            assert (report / entry["file"]).resolve().parent == report.resolve()


def test_export_narrows_to_blocks_and_steps_and_cli_says_so(stores, tmp_path):
    res = CliRunner().invoke(main, ["view", str(stores[0]), "--export", str(tmp_path / "r"), "--blocks", "OUT11",
                                    "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[-1].startswith("wrote a report of ") and "index.html" in res.stderr
    assert res.stdout == ""
    quiet = CliRunner().invoke(main, ["view", str(stores[0]), "--export", str(tmp_path / "q"), "--blocks", "OUT11",
                                      "--steps", "1", "--quiet"])
    assert (quiet.exit_code, quiet.output) == (0, "")  # --quiet: no bar, no closing line
    keys = [dict(parse_qsl(k)) for k in _data(tmp_path / "r")["views"]]
    assert {k["step"] for k in keys if "step" in k} == {"1"}
    assert {k["block"] for k in keys if k["view"] == "grid"} == {"OUT11"}
    assert {k["layer"].split(".")[0] for k in keys if k["view"] == "attention"} <= {"OUT11"}


def test_selection_options_without_export_are_refused(stores):
    res = CliRunner().invoke(main, ["view", str(stores[0]), "--steps", "1", "--no-browser"])
    assert res.exit_code == 2 and "go with --export" in res.output
    res = CliRunner().invoke(main, ["view", str(stores[0]), "--json", "--no-browser"])
    assert res.exit_code == 2 and "--json go with --export" in res.output


def test_export_json_lists_the_manifest_entries(stores, tmp_path):
    res = CliRunner().invoke(main, ["view", str(stores[0]), "--export", str(tmp_path / "r"), "--blocks", "OUT11",
                                    "--steps", "1", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert sorted(e["file"] for e in listed) == sorted(e["file"] for e in manifest["files"])
    assert sum(e["kind"] == "report-view" for e in listed) > 0


def test_a_bad_selection_writes_nothing(stores, tmp_path):
    res = CliRunner().invoke(main, ["view", str(stores[0]), "--export", str(tmp_path / "r"), "--blocks", "IN99"])
    assert res.exit_code == 1 and "IN99" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_pick_defaults_select_the_cond_half(stores, tmp_path):
    export_report(stores[:1], tmp_path / "r", Pick(guidance="both", steps="3"), progress=False)
    halves = {dict(parse_qsl(k)).get("guidance") for k in _data(tmp_path / "r")["views"]}
    assert halves == {"cond", "uncond", None}  # final images have no guidance half

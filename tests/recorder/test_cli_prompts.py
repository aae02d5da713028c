"""``dumpunet record --prompts``: many prompts into one store (or one store each), resumable, on tiny-sd1."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner  # noqa: E402
from interrupts import interrupt_run  # noqa: E402

import dumpunet  # noqa: E402
from dumpunet.cli import main  # noqa: E402
from dumpunet.store.validate import validate  # noqa: E402

pytestmark = pytest.mark.recorder

FAST = ["--sampling-steps", "2", "--blocks", "IN00,OUT11", "--attention", "none", "--width", "64", "--height", "64"]
"""Two steps, two blocks, no attention: every test here records in seconds."""


def invoke(*args: str):
    return CliRunner().invoke(main, ["record", *args], catch_exceptions=False)


def test_three_prompts_are_three_runs_named_by_their_prompts_and_a_rerun_skips_them(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n# dogs next\n\na (~: M00: cute :~) dog\na bird\n")
    out = tmp_path / "p.zarr"
    res = invoke("--prompts", str(prompts), *FAST, "--seed", "5", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["recorded"], summary["skipped"], summary["seed"], summary["calls"]) == (
        ["p0000", "p0001", "p0002"], [], 5, 6)
    assert "record 3 prompts" in res.stderr and "record p0000" not in res.stderr  # one bar over every prompt
    store = dumpunet.open(out)
    assert list(store.runs) == ["p0000", "p0001", "p0002"]
    assert [(r.info.prompt, r.info.seed, r.info.prompt_line, r.complete, r.steps) for r in store.runs.values()] == [
        ("a cat", 5, 1, True, [1, 2]), ("a (~: M00: cute :~) dog", 5, 4, True, [1, 2]), ("a bird", 5, 5, True, [1, 2])]
    assert store.run("p0001").info.block_prompts["cond"]["M00"] == "a cute dog"
    assert not np.array_equal(store.image(run="p0000"), store.image(run="p0002"))
    assert validate(out).ok
    info = CliRunner().invoke(main, ["info", str(out)]).output
    assert f"prompts   {prompts}: 3 prompts, seed 5 where a row gives none (record --prompts)" in info
    assert "run p0002: complete\n  prompt           a bird\n  seed             5\n  prompts line     5\n" in info
    assert json.loads(CliRunner().invoke(main, ["info", str(out), "--json"]).output)["prompt_list"]["count"] == 3

    again = invoke("--prompts", str(prompts), *FAST, "--seed", "5", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert again.stderr.splitlines() == [f"skipping 3 of 3 prompts already recorded in {out}",
                                         f"nothing to record: all 3 prompts are recorded in {out}"]

    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    other = invoke("--prompts", str(prompts), *FAST, "--seed", "5", "--cfg", "5", "--out", str(out))
    assert other.exit_code == 1
    assert other.output == (f"Error: {out} was recorded with other options: --cfg 5.0 (recorded: 7.0); record into "
                            "another --out (or --out-dir), or pass --overwrite to start over\n")
    prompts.write_text("a cat\n# dogs next\n\na (~: M00: cute :~) dog\na crow\n")
    changed = invoke("--prompts", str(prompts), *FAST, "--seed", "5", "--out", str(out))
    assert changed.exit_code == 1
    assert (f"{prompts} differs in its prompts, negative prompts or seeds (line 5: prompt 'a crow', run p0002 has "
            "'a bird')") in changed.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # refused before touching the store


def test_jsonl_rows_bring_their_seeds_and_a_run_equals_its_prompt_recorded_alone(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a cat", "seed": 11}\n{"prompt": "a dog", "negative_prompt": "blurry"}\n')
    out = tmp_path / "p.zarr"
    res = invoke("--prompts", str(prompts), *FAST, "--seed", "3", "--negative-prompt", "ugly", "--sampler", "DPM++ 2M",
                 "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    assert res.stderr == ""
    runs = dumpunet.open(out).runs
    assert [(r.info.prompt, r.info.negative_prompt, r.info.seed, r.info.seeds) for r in runs.values()] == [
        ("a cat", "ugly", 11, (11,)), ("a dog", "blurry", 3, (3,))]
    alone = tmp_path / "alone.zarr"
    res = invoke("--prompt", "a cat", "--negative-prompt", "ugly", "--seed", "11", *FAST, "--sampler", "DPM++ 2M",
                 "--out", str(alone), "--quiet")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(runs["p0000"].image(0), dumpunet.open(alone).image(0))
    np.testing.assert_array_equal(runs["p0000"].features("OUT11", 2), dumpunet.open(alone).features("OUT11", 2))


def test_out_dir_writes_one_store_a_prompt_and_a_rerun_skips_them(tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,seed\na cat,1\na dog,\n")
    stores = tmp_path / "stores"
    res = invoke("--prompts", str(prompts), *FAST, "--seed", "9", "--out-dir", str(stores), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["recorded"] == ["p0000", "p0001"]
    assert sorted(p.name for p in stores.iterdir()) == ["p0000.zarr", "p0001.zarr"]
    for i, (prompt, seed) in enumerate([("a cat", 1), ("a dog", 9)]):
        store = dumpunet.open(stores / f"p{i:04d}.zarr")
        assert store.run_names == ["main"]
        assert (store.run().info.prompt, store.run().info.seed, store.run().info.prompt_line) == (prompt, seed, i + 2)
        assert (store.info.prompt_list.index, store.info.prompt_list.count) == (i, 2)
        assert validate(store.path).ok
    again = invoke("--prompts", str(prompts), *FAST, "--seed", "9", "--out-dir", str(stores))
    assert again.exit_code == 0
    assert again.stderr.splitlines()[0] == f"skipping 2 of 2 prompts already recorded in {stores}"


def test_pair_records_a_base_and_a_layered_run_per_prompt(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a (~: M00: cute :~) cat\na (~: OUT11: ugly :~) dog\n")
    out = tmp_path / "p.zarr"
    res = invoke("--prompts", str(prompts), *FAST, "--seed", "2", "--pair", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    store = dumpunet.open(out)
    assert store.run_names == ["p0000-base", "p0000", "p0001-base", "p0001"]
    assert [(p.base, p.layered, p.label) for p in store.pairs] == [("p0000-base", "p0000", "p0000"),
                                                                  ("p0001-base", "p0001", "p0001")]
    base, layered = store.pair("p0001")
    assert (base.info.prompt, layered.info.prompt) == ("a  dog", "a (~: OUT11: ugly :~) dog")
    assert validate(out).ok


def test_an_interrupted_list_resumes_skipping_the_complete_prompts_and_redoing_the_cut_one(tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    out = tmp_path / "p.zarr"
    args = ["--prompts", str(prompts), *FAST, "--seed", "4", "--out", str(out)]
    restore = interrupt_run(monkeypatch, "p0002")  # after its first step
    cut = invoke(*args)
    assert cut.exit_code == 1
    assert cut.output.splitlines()[-1] == (
        f"Error: interrupted; the prompts recorded completely stay in {out}: run the same command again to record the "
        "rest (they are skipped, the interrupted one is recorded again)")
    store = dumpunet.open(out)
    assert [(n, r.complete, r.steps) for n, r in store.runs.items()] == [
        ("p0000", True, [1, 2]), ("p0001", True, [1, 2]), ("p0002", False, [1])]
    report = validate(out)
    assert report.ok  # a cut run is sound: its complete step stays readable

    restore()
    images = [store.image(run=name) for name in ("p0000", "p0001")]
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert again.stderr.splitlines()[0] == f"skipping 2 of 3 prompts already recorded in {out}"
    assert again.stderr.splitlines()[-1] == (f"recorded 1 prompt (2 U-Net calls, seed 4 where a row gives none) into {out}; "
                                             "2 were recorded before")
    store = dumpunet.open(out)
    assert [(n, r.complete, r.steps) for n, r in store.runs.items()] == [
        ("p0000", True, [1, 2]), ("p0001", True, [1, 2]), ("p0002", True, [1, 2])]
    for name, image in zip(("p0000", "p0001"), images):
        np.testing.assert_array_equal(store.image(run=name), image)  # kept, not recorded again
    assert validate(out).ok and validate(out).notes == []
    assert CliRunner().invoke(main, ["validate", str(out)]).output.strip().endswith(": ok")


def test_a_list_grown_by_appended_lines_adds_its_new_prompts_resumably_and_changed_rows_are_refused(tmp_path,
                                                                                                      monkeypatch):
    from dumpunet.prompt_lists import read_prompt_list

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "p.zarr"
    args = ["--prompts", str(prompts), *FAST, "--seed", "4", "--out", str(out)]
    assert invoke(*args, "--quiet").exit_code == 0
    images = [dumpunet.open(out).image(run=name) for name in ("p0000", "p0001")]

    prompts.write_text("a cat\na dog\n# more\na bird\na fish\n")
    restore = interrupt_run(monkeypatch, "p0003")  # after its first step
    grown = invoke(*args)
    assert grown.exit_code == 1
    assert grown.stderr.splitlines()[:2] == [f"{prompts} adds 2 prompts to the 2 recorded in {out} (runs p0002 on)",
                                             f"skipping 2 of 4 prompts already recorded in {out}"]
    store = dumpunet.open(out)
    assert [(n, r.complete, r.info.prompt_line) for n, r in store.runs.items()] == [
        ("p0000", True, 1), ("p0001", True, 2), ("p0002", True, 4), ("p0003", False, 5)]
    grown_list = read_prompt_list(prompts)
    assert (store.info.prompt_list.count, store.info.prompt_list.sha256) == (4, grown_list.sha256("", 4))
    assert validate(out).ok

    prompts.write_text("a cow\na dog\n# more\na bird\na fish\na crow\n")  # line 1 changed, one more appended
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    changed = invoke(*args)
    assert changed.exit_code == 1
    assert (f"{prompts} differs in its prompts, negative prompts or seeds (line 1: prompt 'a cow', run p0000 has "
            "'a cat'); a recorded list grows only by rows appended at its end;") in changed.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before

    restore()
    prompts.write_text("a cat\na dog\n# more\na bird\na fish\n")
    again = invoke(*args, "--json")
    assert again.exit_code == 0, again.output
    assert again.stderr.splitlines()[0] == f"skipping 3 of 4 prompts already recorded in {out}"
    assert json.loads(again.stdout)["recorded"] == ["p0003"]
    store = dumpunet.open(out)
    assert [(n, r.complete, r.info.prompt, r.steps) for n, r in store.runs.items()] == [
        ("p0000", True, "a cat", [1, 2]), ("p0001", True, "a dog", [1, 2]), ("p0002", True, "a bird", [1, 2]),
        ("p0003", True, "a fish", [1, 2])]
    for name, image in zip(("p0000", "p0001"), images):
        np.testing.assert_array_equal(store.image(run=name), image)  # kept, not recorded again
    assert validate(out).ok and validate(out).notes == []
    shorter = tmp_path / "shorter.txt"
    shorter.write_text("a cat\na dog\n")
    refused = invoke("--prompts", str(shorter), *args[2:])
    assert refused.exit_code == 1
    assert f"{out} was recorded from a prompt list of 4 prompts ({prompts}), {shorter} holds 2;" in refused.output


def test_a_grown_pair_list_pairs_its_new_prompts_and_a_grown_out_dir_adds_stores(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a (~: M00: cute :~) cat\n")
    out, stores = tmp_path / "p.zarr", tmp_path / "stores"
    for where in (["--pair", "--out", str(out)], ["--out-dir", str(stores)]):
        assert invoke("--prompts", str(prompts), *FAST, "--seed", "2", *where, "--quiet").exit_code == 0
    first = dumpunet.open(stores / "p0000.zarr").info.prompt_list
    prompts.write_text("a (~: M00: cute :~) cat\na (~: OUT11: ugly :~) dog\n")
    for where in (["--pair", "--out", str(out)], ["--out-dir", str(stores)]):
        res = invoke("--prompts", str(prompts), *FAST, "--seed", "2", *where, "--json")
        assert res.exit_code == 0, res.output
        assert (json.loads(res.stdout)["recorded"], json.loads(res.stdout)["skipped"]) == (["p0001"], ["p0000"])
    store = dumpunet.open(out)
    assert store.run_names == ["p0000-base", "p0000", "p0001-base", "p0001"]
    assert [p.label for p in store.pairs] == ["p0000", "p0001"]
    assert store.info.prompt_list.count == 2 and validate(out).ok
    # one store a prompt: the first keeps the list it was recorded from, the new one names the grown list
    assert dumpunet.open(stores / "p0000.zarr").info.prompt_list == first
    added = dumpunet.open(stores / "p0001.zarr").info.prompt_list
    assert (first.count, added.count, added.index, added.sha256 != first.sha256) == (1, 2, 1, True)
    assert dumpunet.open(stores / "p0001.zarr").run().info.prompt == "a (~: OUT11: ugly :~) dog"
    again = invoke("--prompts", str(prompts), *FAST, "--seed", "2", "--out-dir", str(stores))
    assert again.exit_code == 0 and again.stderr.splitlines()[0] == f"skipping 2 of 2 prompts already recorded in {stores}"


SWEEP = ["--insert", "ugly", "--into-blocks", "IN04,M00", "--record-blocks", "IN00,OUT11", "--attention", "none",
         "--sampling-steps", "2", "--width", "64", "--height", "64", "--seed", "3"]
"""A sweep over two blocks (three runs a prompt), as fast as FAST."""


def test_sweep_prompts_sweeps_every_prompt_into_one_store_resumably_with_a_contact_sheet_per_prompt(tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "sweeps.zarr"
    args = ["sweep", "--prompts", str(prompts), *SWEEP, "--out", str(out)]
    restore = interrupt_run(monkeypatch, "p0001-M00")  # after its first step
    cut = CliRunner().invoke(main, args, catch_exceptions=False)
    assert cut.exit_code == 1 and "interrupted; the prompts recorded completely stay in" in cut.output
    assert [(n, r.complete) for n, r in dumpunet.open(out).runs.items()] == [
        ("p0000-base", True), ("p0000-IN04", True), ("p0000-M00", True), ("p0001-base", True), ("p0001-IN04", True),
        ("p0001-M00", False)]
    restore()
    again = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert again.stderr.splitlines()[0] == f"skipping 1 of 2 prompts already recorded in {out}"
    assert (json.loads(again.stdout)["recorded"], json.loads(again.stdout)["calls"]) == (["p0001"], 6)
    store = dumpunet.open(out)
    assert store.run_names == ["p0000-base", "p0000-IN04", "p0000-M00", "p0001-base", "p0001-IN04", "p0001-M00"]
    assert all(r.complete for r in store.runs.values()) and validate(out).ok
    assert [(p.base, p.layered, p.label) for p in store.pairs] == [
        ("p0000-base", "p0000-IN04", "p0000-IN04"), ("p0000-base", "p0000-M00", "p0000-M00"),
        ("p0001-base", "p0001-IN04", "p0001-IN04"), ("p0001-base", "p0001-M00", "p0001-M00")]
    base, layered = store.pair("p0001-M00")
    assert (base.info.prompt, layered.info.prompt) == ("a dog, ", "a dog, (~:M00:ugly:~)")
    assert layered.info.block_prompts["cond"]["M00"] == "a dog, ugly" and layered.info.prompt_line == 2

    sheet = CliRunner().invoke(main, ["render", str(out), "--sweep", "--run", "p0001-base", "--out", str(tmp_path / "s1"),
                                      "--json"])
    assert sheet.exit_code == 0, sheet.output
    cells = json.loads(sheet.stdout)[0]["cells"]
    assert cells == [{"run": "p0001-base", "caption": "base"}, {"run": "p0001-IN04", "caption": "IN04"},
                     {"run": "p0001-M00", "caption": "M00"}]
    wrong = CliRunner().invoke(main, ["render", str(out), "--sweep", "--run", "p0001", "--out", str(tmp_path / "s2")])
    assert wrong.exit_code == 1
    assert "holds no sweep of base run 'p0001' (base runs: p0000-base, p0001-base)" in wrong.output
    diff = CliRunner().invoke(main, ["diff", str(out), "--pair", "p0000-IN04", "--blocks", "OUT11", "--steps", "2",
                                     "--out", str(tmp_path / "d"), "--quiet"])
    assert diff.exit_code == 0, diff.output
    assert (tmp_path / "d").is_dir() and any((tmp_path / "d").rglob("*.png"))


def test_sweep_prompts_out_dir_writes_one_sweep_store_a_prompt(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    stores = tmp_path / "sweeps"
    args = ["sweep", "--prompts", str(prompts), *SWEEP, "--out-dir", str(stores), "--quiet"]
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    for i, prompt in enumerate(["a cat", "a dog"]):
        store = dumpunet.open(stores / f"p{i:04d}.zarr")
        assert store.run_names == ["base", "IN04", "M00"] and [p.label for p in store.pairs] == ["IN04", "M00"]
        assert store.run("IN04").info.prompt == f"{prompt}, (~:IN04:ugly:~)" and validate(store.path).ok
    sheet = CliRunner().invoke(main, ["render", str(stores / "p0001.zarr"), "--sweep", "--out", str(tmp_path / "s"),
                                      "--json"])
    assert [c["caption"] for c in json.loads(sheet.stdout)[0]["cells"]] == ["base", "IN04", "M00"]
    again = CliRunner().invoke(main, args[:-1], catch_exceptions=False)
    assert again.exit_code == 0 and again.stderr.splitlines()[0] == f"skipping 2 of 2 prompts already recorded in {stores}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a cat\na (~: M00 cute :~) dog\n", "bad layer prompt: "),
        ("a cat\na (~: IN12: cute :~) dog\n", "bad layer prompt: unknown block 'IN12'"),
    ],
)
def test_a_malformed_line_is_one_error_with_its_line_and_nothing_is_written(tmp_path, text, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(text)
    out = tmp_path / "p.zarr"
    res = CliRunner().invoke(main, ["record", "--prompts", str(prompts), *FAST, "--out", str(out)])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0].startswith(f"Error: {prompts}, line 2: {message}"), res.output
    assert lines[1] == "  a (~: IN12: cute :~) dog" if "IN12" in text else lines[1] == "  a (~: M00 cute :~) dog"
    assert lines[2].strip().startswith("^")
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "a cat"], "Error: --prompts takes the prompts from its file; give --prompt or --prompts, not both"),
        (["--infotext", "a cat\nSteps: 2"], "Error: --prompts takes the prompts from its file; give --infotext or --prompts, not both"),
        (["--out", "p.zarr", "--out-dir", "stores"],
         "Error: --prompts records into one store (--out) or one store a prompt (--out-dir): give one of them"),
        ([], "Error: --prompts records into one store (--out) or one store a prompt (--out-dir): give one of them"),
        (["--out-dir", "s3://bucket/stores"],
         ("Error: --out-dir takes a local folder; record to a URL with --out URL (one store), or copy each store with "
          "dumpunet copy")),
        (["--out-dir", "gs://bucket/stores"],  # any URL: the option is typed as --out is, so is_url decides
         ("Error: --out-dir takes a local folder; record to a URL with --out URL (one store), or copy each store with "
          "dumpunet copy")),
        (["--out-dir", "ftp://host/stores"], ("Error: Invalid value for '--out-dir': ftp://host/stores: unknown URL scheme 'ftp' (stores are local folders or "
                                          "s3://, s3a://, gs://, gcs://, az://, abfs://, http://, https:// URLs)")),
    ],
)
def test_prompts_conflicts_are_usage_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a cat\n")
    extra = ["--out", "p.zarr"] if args[:1] in (["--prompt"], ["--infotext"]) else []
    res = CliRunner().invoke(main, ["record", "--prompts", "prompts.txt", *extra, *args])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines()[-1] == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]


def test_out_is_required_without_prompts_and_out_dir_needs_prompts(tmp_path):
    res = CliRunner().invoke(main, ["record", "--prompt", "a cat"])
    assert res.exit_code == 2 and res.output.splitlines()[-1] == "Error: Missing option '--out'."
    res = CliRunner().invoke(main, ["record", "--prompt", "a cat", "--out-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert res.output.splitlines()[-1] == "Error: --out-dir goes with --prompts (one store a prompt); give --out for one recording"
    res = CliRunner().invoke(main, ["sweep", "--insert", "x"])
    assert res.exit_code == 2 and res.output.splitlines()[-1] == "Error: Missing option '--out'."


@pytest.mark.slow
def test_kill_9_mid_list_then_the_same_command_finishes_it(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import zarr
    from waiting import BACKSTOP, wait_until

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na bird\n")
    out = tmp_path / "p.zarr"
    args = ["record", "--prompts", str(prompts), *FAST[2:], "--sampling-steps", "6", "--seed", "8", "--out", str(out),
            "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "dumpunet.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: zarr.open_array(out / "runs/p0001/call_done", mode="r").shape[0] > 2, proc=proc,
                   what="3 recorded U-Net calls of the second prompt")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(BACKSTOP)
    store = dumpunet.open(out)
    assert [(n, r.complete) for n, r in store.runs.items()] == [("p0000", True), ("p0001", False)]
    assert validate(out).ok
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    store = dumpunet.open(out)
    assert [(n, r.complete, r.steps) for n, r in store.runs.items()] == [
        (f"p000{i}", True, [1, 2, 3, 4, 5, 6]) for i in range(3)]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["p0000", "p0001", "p0002", "zarr.json"]
    assert validate(out).ok

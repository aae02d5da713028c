"""One output-folder lifecycle for every writer: checked first, files atomic, one manifest written last."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_stores import make_paired_store
from test_attention_view import store  # noqa: F401 - the attention store fixture

import dumpunet
from dumpunet import Pick
from dumpunet.analyzer import output as output_module
from dumpunet.analyzer.attention_grids import ATTENTION_COLOR, render_attention
from dumpunet.analyzer.heatmap import write_heatmaps
from dumpunet.analyzer.output import OutputFolder, name_part, output_path, text_part
from dumpunet.analyzer.sweep import contact_sheet
from dumpunet.cli import main
from dumpunet.errors import OutputError
from dumpunet.store import schema
from dumpunet.store.schema import BlockInfo, LayerAttrs, RunAttrs, TokenRow
from dumpunet.store.writer import StoreWriter


@pytest.fixture
def spy(monkeypatch):
    """Note the manifests that write something, and the files that go through OutputFolder.write."""
    seen = {"manifests": set(), "files": []}
    real_manifest, real_write = output_module.Manifest.write, OutputFolder.write

    def manifest_write(self):
        if self._pending:
            seen["manifests"].add(id(self))
        real_manifest(self)

    def write(self, name, content, entry):
        seen["files"].append(self.path / name)
        return real_write(self, name, content, entry)

    monkeypatch.setattr(output_module.Manifest, "write", manifest_write)
    monkeypatch.setattr(OutputFolder, "write", write)
    return seen


def writers(girl, swept, attn):
    yield "render", lambda out: dumpunet.render(girl, Pick(blocks="M00,OUT11", steps="20"), out=out, progress=False)
    yield "export", lambda out: dumpunet.export(girl, Pick(blocks="M00", steps="1,20"), out=out, format="npy",
                                                progress=False)
    yield "diff", lambda out: dumpunet.diff(swept, Pick(blocks="OUT11", steps="20"), pair="M00", out=out,
                                            progress=False)
    yield "sweep", lambda out: contact_sheet(swept, out=out)
    yield "attention", lambda out: render_attention(attn, Pick(blocks="M00", steps="1"), out=out, progress=False)
    yield "heatmap", lambda out: write_heatmaps(attn, Pick(guidance="both"), word="1", out=out)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    return make_paired_store(tmp_path_factory.mktemp("out") / "sweep.zarr", labels=("IN04", "M00"))


def test_every_writer_writes_through_one_folder_and_one_manifest(girl, swept, store, tmp_path, spy):  # noqa: F811
    for name, write in writers(girl, swept, store):
        spy["manifests"], spy["files"] = set(), []
        out = tmp_path / name
        files = write(out)
        assert sorted(f.path for f in files) == sorted(spy["files"]), name
        assert len(spy["manifests"]) == 1, name  # diff used to write a second manifest over render's
        listed = [e["file"] for e in json.loads((out / "manifest.json").read_text())["files"]]
        assert listed == sorted(f.path.name for f in files), name
        assert sorted([*listed, "manifest.json"]) == sorted(p.name for p in out.iterdir()), name


def test_a_foreign_manifest_or_a_file_stops_every_writer_before_it_writes(girl, swept, store, tmp_path):  # noqa: F811
    (tmp_path / "afile").write_text("x")
    for name, write in writers(girl, swept, store):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
        with pytest.raises(OutputError) as err:
            write(folder)
        assert str(err.value) == f"{folder / 'manifest.json'} exists but is not a dumpunet manifest; choose another output folder"
        assert [p.name for p in folder.iterdir()] == ["manifest.json"], name
        with pytest.raises(OutputError) as err:
            write(tmp_path / "afile" / "sub")
        assert str(err.value).startswith(f"cannot create output folder {tmp_path / 'afile' / 'sub'}"), name


def test_a_failing_body_still_lists_what_was_written(tmp_path):
    out = OutputFolder(tmp_path / "o")
    with pytest.raises(RuntimeError), out:
        out.write("a.bin", b"1", {"kind": "x"})
        raise RuntimeError("boom")
    doc = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert doc["files"] == [{"file": "a.bin", "kind": "x"}]


# ----------------------------------------------------------------------------- names from a store

@pytest.mark.parametrize("name", ["/outside/ESCAPED-step001.png", "../x", "..", ".", "", " ", ".hidden.png",
                                  "a/b.png", "a\\b.png", "x\0.png"])
def test_output_path_refuses_anything_but_one_plain_name(tmp_path, name):
    with pytest.raises(OutputError) as err:
        output_path(tmp_path / "out", name)
    assert str(err.value) == f"refusing to write {name!r} into {tmp_path / 'out'}: not a plain file name"


def test_output_path_refuses_a_link_that_leads_out_and_keeps_plain_names(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sneaky.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(OutputError) as err:
        output_path(out, "sneaky.png")
    assert str(err.value) == (f"refusing to write {out / 'sneaky.png'}: it resolves to {tmp_path / 'elsewhere.png'}, "
                              f"outside the output folder {out}")
    assert output_path(out, "OUT11-step020.png") == out / "OUT11-step020.png"
    assert output_path(out, "sub", "a.png") == out / "sub" / "a.png"


def test_name_part_takes_the_store_grammar_and_text_part_keeps_texts_apart():
    assert name_part("OUT11.attn2", "layer") == "OUT11.attn2"
    for bad in ("/outside/ESCAPED", "../x", "a..b", ".x", "", 3, "a b"):
        with pytest.raises(OutputError, match="cannot be part of a file name"):
            name_part(bad, "layer")
    texts = ["girl", "hair", "pink,hair", "pink hair", "Pink", "../../etc/passwd", "", "日本", "a" * 100]
    parts = [text_part(t) for t in texts]
    assert len(set(parts)) == len(texts)
    assert parts[:2] == ["girl", "hair"]
    for p in parts:
        assert output_path("out", f"heatmap-{p}.png").name == f"heatmap-{p}.png"
        assert len(p) <= 40


def crafted_store(path, *, block="IN01", layer="IN01.attn2"):
    """A store whose block (module alias ``OUT11``) and attention layer are named as given (the writer checks neither)."""
    info = BlockInfo(block, "OUT11", ("OUT11",), "OUT11", (2, 4, 4), (2, 4, 4), True)
    w = StoreWriter(path, model={}, versions={})
    w.set_block_table([info])
    rows = {"cond": (TokenRow((0, 1, 2, 3), ("<s>", "a</w>", "girl</w>", "</s>"), 3),),
            "uncond": (TokenRow((0, 1, 2, 3), ("<s>", "</s>", "</s>", "</s>"), 1),)}
    attrs = RunAttrs(n_images=1, guidance=("uncond", "cond"), steps=1, height=8, width=8, attention_layers=(layer,),
                     tokens=rows)
    w.begin_run("main", attrs, [info], which=("output",), dtype="float32")
    w.add_arrays("main", {(layer, "qk"): (schema.ATTENTION_FEATURES["qk"], (1, 2, 1, 16, 4), "float32",
                                          {"layer": layer}, LayerAttrs(layer_hw=(4, 4)))})
    w.submit_call("main", step=1, substep=0, timestep=1.0, slabs={
        (block, "output"): np.arange(64, dtype=np.float32).reshape(2, 1, 2, 4, 4),
        (layer, "qk"): np.full((2, 1, 1, 16, 4), 0.25, np.float32),
    })
    w.finish_run("main", images=np.full((1, 8, 8, 3), 100, np.uint8))
    w.close()
    return path


def files_under(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("guard", ["name_part", "output_path"])
@pytest.mark.parametrize("command", ["attention", "render", "export"])
def test_a_crafted_name_never_writes_outside_out(tmp_path, monkeypatch, command, guard):
    """The reader's own name check is switched off here: the writers' guards alone must hold."""
    from dumpunet.analyzer import attention_grids, export, render_plan
    from dumpunet.store.schema import attrs, fields

    outside = tmp_path / "outside"
    outside.mkdir()
    evil = f"{outside}/ESC"
    st = crafted_store(tmp_path / "a.zarr", layer=evil if command == "attention" else "IN01.attn2",
                       block=evil if command != "attention" else "IN01")
    monkeypatch.setattr(fields, "check_name", lambda name, where: name)
    monkeypatch.setattr(attrs, "check_name", lambda name, where: name)
    if guard == "output_path":
        for module in (attention_grids, export, render_plan):
            monkeypatch.setattr(module, "name_part", lambda name, what: name)
    out = tmp_path / "out"
    write = {
        "attention": lambda: render_attention(st, Pick(steps="1"), out=out, progress=False),
        "render": lambda: dumpunet.render(st, Pick(blocks="OUT11", steps="1"), out=out, progress=False),
        "export": lambda: dumpunet.export(st, Pick(blocks="OUT11", steps="1"), out=out, format="npy", progress=False),
    }[command]
    with pytest.raises(OutputError) as err:
        write()
    assert "\n" not in str(err.value)
    assert evil in str(err.value)
    assert list(outside.iterdir()) == []
    for f in files_under(tmp_path):
        assert f.resolve().is_relative_to(tmp_path / "a.zarr") or f.resolve().is_relative_to(out.resolve()), f


@pytest.mark.parametrize("command", ["attention", "render", "export"])
def test_a_crafted_store_is_one_line_on_the_command_line(tmp_path, command):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = f"{outside}/ESC"
    st = crafted_store(tmp_path / "a.zarr", layer=evil if command == "attention" else "IN01.attn2",
                       block=evil if command != "attention" else "IN01")
    res = CliRunner().invoke(main, [command, str(st), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1 and evil in res.output, res.output
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- file names of one view

def test_attention_tokens_and_query_each_get_their_own_file(store, tmp_path):  # noqa: F811
    out = tmp_path / "a"
    first = render_attention(store, Pick(blocks="M00", steps="1"), out=out, tokens="girl", progress=False)
    second = render_attention(store, Pick(blocks="M00", steps="1"), out=out, tokens="hair", progress=False)
    default = render_attention(store, Pick(blocks="M00", steps="1"), out=out, progress=False)
    names = [f.path.name for f in first + second + default]
    slug = ATTENTION_COLOR.slug()
    assert names == [f"M00.attn2-step001-img0-cond-tok-girl-qk-{slug}.png",
                     f"M00.attn2-step001-img0-cond-tok-hair-qk-{slug}.png",
                     f"M00.attn2-step001-img0-cond-qk-{slug}.png"]
    listed = {e["file"]: e["columns"] for e in json.loads((out / "manifest.json").read_text())["files"]}
    assert listed == {names[0]: ["5:girl"], names[1]: ["3:h", "4:air"], names[2]: listed[names[2]]}
    assert len(listed[names[2]]) > 2
    queried = render_attention(store, Pick(blocks="IN01.attn1", steps="1"), out=out, query=(0.25, 0.75),
                               progress=False)
    assert [f.path.name for f in queried] == [f"IN01.attn1-step001-img0-cond-query-x0.25-y0.75-qk-{slug}.png"]


# ----------------------------------------------------------------------------- --out ""

def test_an_empty_out_is_refused_before_anything_is_written(girl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="empty path"):
        dumpunet.render(girl, Pick(blocks="OUT11", steps="20"), out="", progress=False)
    for command in ("render", "export", "diff", "attention", "heatmap"):
        res = CliRunner().invoke(main, [command, str(girl), "--out", ""])
        assert res.exit_code == 2, (command, res.output)
        assert "an empty path names no file or folder" in res.output, command
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- concurrent and killed writers

def test_two_writers_into_one_folder_keep_every_entry(tmp_path):
    a, b = OutputFolder(tmp_path / "o"), OutputFolder(tmp_path / "o")  # both read the (missing) manifest first
    with a, b:
        for i in range(4):
            a.write(f"a{i}.bin", b"a", {"kind": "x"})
            b.write(f"b{i}.bin", b"b", {"kind": "y"})
    listed = [e["file"] for e in json.loads((tmp_path / "o" / "manifest.json").read_text())["files"]]
    assert listed == sorted(f"{k}{i}.bin" for k in "ab" for i in range(4))


TWO_RENDERS = """
import sys
from dumpunet.cli import main
sys.exit(main(["render", sys.argv[1], "--blocks", sys.argv[2], "--out", sys.argv[3], "--jobs", "1", "--quiet"]))
"""


def test_two_renders_at_once_into_one_folder_keep_every_entry(girl, tmp_path):
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", TWO_RENDERS, str(girl), blocks, str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for blocks in ("IN00-IN11", "M00-OUT11")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 25 * 4
    listed = [e["file"] for e in json.loads((out / "manifest.json").read_text())["files"]]
    assert listed == pngs
    assert sorted(p.name for p in out.iterdir()) == [*pngs, "manifest.json"]  # no temporary file left


KILLED_WRITER = """
import sys, time
from pathlib import Path
from dumpunet.analyzer import output
output.FLUSH_SECONDS = 0.0
out = output.OutputFolder(Path(sys.argv[1]))
def stuck(fh):
    fh.write(b"half")
    fh.flush()
    print("writing", flush=True)
    time.sleep(600)
with out:
    for i in range(3):
        out.write(f"f{i}.bin", b"whole", {"kind": "x", "i": i})
    out.write("f3.bin", stuck, {"kind": "x", "i": 3})
"""


def test_a_killed_writer_leaves_its_files_listed_and_the_next_run_removes_its_temporary_file(tmp_path):
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n", proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(timeout=60)
    names = sorted(p.name for p in out.iterdir())
    temps = [n for n in names if n.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].startswith(f".f3.bin.{proc.pid}.")
    assert [n for n in names if not n.endswith(".tmp")] == ["f0.bin", "f1.bin", "f2.bin", "manifest.json"]
    listed = [e["file"] for e in json.loads((out / "manifest.json").read_text())["files"]]
    assert listed == ["f0.bin", "f1.bin", "f2.bin"]
    live = out / f".g.bin.{os.getpid()}.abc.tmp"  # a temporary file of a writer still running: kept
    live.write_bytes(b"x")
    with OutputFolder(out) as again:
        again.write("g.bin", b"g", {"kind": "x"})
    assert sorted(p.name for p in out.iterdir()) == [live.name, "f0.bin", "f1.bin", "f2.bin", "g.bin", "manifest.json"]
    listed = [e["file"] for e in json.loads((out / "manifest.json").read_text())["files"]]
    assert listed == ["f0.bin", "f1.bin", "f2.bin", "g.bin"]

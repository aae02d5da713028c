"""One output-folder lifecycle for every writer: checked first, files atomic, one manifest written last."""

from __future__ import annotations

import json

import pytest
from synthetic_stores import make_paired_store
from test_attention_view import store  # noqa: F401 - the attention store fixture

import dumpunet
from dumpunet import Pick
from dumpunet.analyzer import output as output_module
from dumpunet.analyzer.attention_grids import render_attention
from dumpunet.analyzer.heatmap import write_heatmaps
from dumpunet.analyzer.output import OutputFolder
from dumpunet.analyzer.sweep import contact_sheet
from dumpunet.errors import OutputError


@pytest.fixture
def spy(monkeypatch):
    """Count manifest writes that write something, and the files that go through OutputFolder.write."""
    seen = {"manifests": 0, "files": []}
    real_manifest, real_write = output_module.Manifest.write, OutputFolder.write

    def manifest_write(self):
        seen["manifests"] += bool(self._new)
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
        spy["manifests"], spy["files"] = 0, []
        out = tmp_path / name
        files = write(out)
        assert sorted(f.path for f in files) == sorted(spy["files"]), name
        assert spy["manifests"] == 1, name  # diff used to write a second manifest over render's
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

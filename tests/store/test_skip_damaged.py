"""``--skip-damaged`` (issue 13): render, export and diff skip the maps of damaged chunks, and only those.

One tiny-sd1 recording (:func:`crafted.record_base`) is copied and two chunks of its default run
are damaged: IN01 at step 2 truncated, OUT11 at step 1 deleted (image 0, cond). Without the flag
every command exits 1 with one line; with it, it exits 0, writes exactly the files the undamaged
store gives minus those of the two damaged maps, warns once per skipped map and lists only the
written files in the manifest.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner, Result
from crafted import BLK, CHUNK, COMMANDS, L, record_base

import dumpunet
from dumpunet.analyzer.pick import Pick
from dumpunet.cli import main
from dumpunet.errors import DamagedChunkError

pytestmark = pytest.mark.recorder

DAMAGED = {  # chunk file -> the map (block, step) it holds: image 0, cond, run layered
    f"{BLK}/{CHUNK}": ("IN01", 2),
    f"{L}/blocks/OUT11/output/c.0.0.1.0.0.0": ("OUT11", 1),
}

EXTRA = {  # besides the corpus's command lines: the original's per-channel dump, and the renders that read
    # every map before drawing (a run-wide Auto range; a PCA fit) or draw each twice (--with-grid)
    "export-bin": ["export", "{store}", "--blocks", "IN01,OUT11", "--steps", "1-2", "--format", "bin", "--quiet",
                   "--out", "{out}"],
    "render-run-scope": [*COMMANDS["render"], "--transform", "auto01", "--auto-scope", "run"],
    "render-pca": [*COMMANDS["render"], "--method", "PCA"],
    "render-with-grid": [*COMMANDS["render"], "--average", "mean", "--with-grid"],
}
CASES = {name: COMMANDS[name] for name in ("render", "export", "diff")} | EXTRA


def _map_files(name: str, block: str, step: int) -> str:
    """How the file names of one map (image 0, cond) of ``name``'s output start."""
    if name == "export-bin":
        return f"000-{block}-{step:03d}-"  # 000-IN01-002-0007-cond.bin
    if name == "export":
        return f"{block}-step{step:03d}."  # IN01-step002.npy (cond of image 0 is all it holds)
    return f"{'diff-' if name == 'diff' else ''}{block}-step{step:03d}-img0-cond-"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    """The undamaged recording and its damaged copy."""
    good = record_base(tmp_path_factory.mktemp("skip") / "good.zarr")
    bad = tmp_path_factory.mktemp("skip") / "bad.zarr"
    shutil.copytree(good, bad)
    truncated, deleted = DAMAGED
    (bad / truncated).write_bytes((bad / truncated).read_bytes()[:50])
    (bad / deleted).unlink()
    return good, bad


def _run(name: str, store: Path, out: Path, *extra: str) -> Result:
    args = [a.format(store=store, out=out) for a in CASES[name]]
    return CliRunner().invoke(main, args + list(extra))


def _names(files: Iterable[str]) -> set[str]:
    """File names without the PCA basis digest (a basis fitted without the damaged maps differs)."""
    return {re.sub(r"-pca-[0-9a-f]+", "-pca", f) for f in files}


def _listed(out: Path) -> set[str]:
    return _names(e["file"] for e in json.loads((out / "manifest.json").read_text())["files"])


def _on_disk(out: Path) -> set[str]:
    return _names(p.name for p in out.iterdir()) - {"manifest.json"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_skip_damaged_writes_exactly_the_undamaged_maps(stores, tmp_path, name):
    good, bad = stores
    res = _run(name, good, tmp_path / "good")
    assert res.exit_code == 0, res.output
    everything = _on_disk(tmp_path / "good")

    res = _run(name, bad, tmp_path / "stop")
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "IN01" in lines[0] or "OUT11" in lines[0], lines[0]

    out = tmp_path / "skip"
    res = _run(name, bad, out, "--skip-damaged")
    assert res.exit_code == 0, res.output
    lost = {f for f in everything if any(f.startswith(_map_files(name, b, s)) for b, s in DAMAGED.values())}
    assert lost and lost < everything
    assert _on_disk(out) == everything - lost
    assert _listed(out) == everything - lost

    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning: ")]
    assert _prefixed(warnings), warnings
    assert lines[0].removeprefix("Error: ") in "\n".join(warnings)  # the very error, as a warning
    assert "2 maps skipped: damaged chunks" in res.stderr.splitlines(), res.stderr


def _prefixed(warnings: list[str]) -> bool:
    """Each damaged map warned about exactly once, the warning naming its array, step, image and half."""
    want = [f"warning: skipped {b}-step{s:03d}-img0-cond: {L}/blocks/{b}/output: call {s - 1} (step {s}), image 0, cond: "
            for b, s in sorted(DAMAGED.values())]
    return len(warnings) == len(want) and all(w.startswith(p) for w, p in zip(sorted(warnings), want))


def test_the_python_api_skips_as_the_command_does(stores, tmp_path, capfd):
    good, bad = stores
    pick = Pick(blocks="IN01,OUT11", steps="1-2")
    with pytest.raises(DamagedChunkError):
        dumpunet.render(bad, pick, out=tmp_path / "stop", jobs=1, progress=False)
    everything = {f.path.name for f in dumpunet.render(good, pick, out=tmp_path / "good", jobs=1, progress=False)}
    capfd.readouterr()
    files = dumpunet.render(bad, pick, out=tmp_path / "skip", jobs=1, progress=False, skip_damaged=True)
    err = capfd.readouterr().err.splitlines()
    assert {f.path.name for f in files} == {f for f in everything
                                            if not f.startswith(("IN01-step002-img0-cond-", "OUT11-step001-img0-cond-"))}
    assert _listed(tmp_path / "skip") == _names(f.path.name for f in files)
    assert _prefixed([line for line in err if line.startswith("warning: ")])
    assert err[-1] == "2 maps skipped: damaged chunks"


def test_export_of_attention_layers_refuses_skip_damaged(tmp_path):
    res = CliRunner().invoke(main, ["export", str(tmp_path / "any.zarr"), "--layers", "IN01.attn2", "--skip-damaged",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "--skip-damaged skips damaged block maps" in res.output, res.output
    assert not (tmp_path / "out").exists()

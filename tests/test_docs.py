"""The worked example of docs/layer-prompts.md writes what the doc says (every other doc command: test_docs_commands.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

pytestmark = [pytest.mark.recorder, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def shell(command: str, cwd: Path) -> None:
    if shutil.which("dumpunet") is None:
        pytest.skip("the dumpunet command is not installed (pip install -e .)")
    proc = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"


def test_layer_prompt_worked_example_runs(tmp_path):
    doc = (ROOT / "docs" / "layer-prompts.md").read_text()
    section = doc.split("## Worked example", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    for line in block.strip().splitlines():
        shell(line, tmp_path)
    table = json.loads((tmp_path / "explain.json").read_text())["positive"]
    assert table["M00"] == "a excellent girl" and sum(v == "a cute girl" for v in table.values()) == 24
    for name in ("summary.png", "summary.csv", "final-layered-img0.png", "final-base-img0.png", "final-diff-norm-img0.png"):
        assert (tmp_path / "diff" / name).is_file(), name
    assert (tmp_path / "diff" / "diff-OUT11-step010-img0-cond-rb-autosym-block.png").is_file()
    assert (tmp_path / "sheet" / "sweep-img0.png").is_file()
    # the pictures of docs/images come from docs/make_images.sh (tests/test_doc_images.py)


def test_layer_prompt_sweep_of_a_prompt_list_runs(tmp_path):
    doc = (ROOT / "docs" / "layer-prompts.md").read_text()
    section = doc.split("## Paired runs, sweeps and difference maps", 1)[1].split("## Worked example", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    for line in block.strip().splitlines():
        shell(line, tmp_path)
    import dumpunet

    store = dumpunet.open(tmp_path / "sweeps.zarr")
    assert [p.label for p in store.pairs] == [f"p000{i}-{b}" for i in range(2) for b in ("IN04", "M00", "OUT05")]
    assert store.run("p0001-M00").info.prompt == "a cat on a sofa, (~:M00:bad anatomy:~)"
    manifest = json.loads((tmp_path / "sheet-p0001" / "manifest.json").read_text())
    assert [c["caption"] for c in manifest["files"][0]["cells"]] == ["base", "IN04", "M00", "OUT05"]
    assert (tmp_path / "diff-p0001-M00" / "summary.csv").is_file()

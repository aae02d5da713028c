"""The commands the README and docs show run as written (on the embedded tiny model)."""

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


def test_readme_demo_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    demo = next(line for line in readme.splitlines() if "dumpunet record" in line and line.startswith("python3 -m venv"))
    # the set-up part is what this test environment already is; run the rest as written
    command = demo.split(" && ", 3)[3]
    assert command.startswith("dumpunet record")
    shell(command, tmp_path)
    assert (tmp_path / "demo.zarr" / "zarr.json").is_file()
    assert len(list((tmp_path / "demo-renders").glob("OUT11-step*.png"))) == 20


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

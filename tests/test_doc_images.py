"""docs/images: every picture README.md and docs/*.md show exists, and docs/make_images.sh makes each one.

The quick tests read the script's ``keep GLOB NAME`` lines (the names it writes); the slow one runs
the script into a temporary folder (3 to 4 minutes of CPU on the embedded tiny-sd1) and compares
the files and their pixel sizes with the committed ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
SCRIPT = ROOT / "docs" / "make_images.sh"
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IMAGE_LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img\s[^>]*src=\"([^\"]+)\"")
PICTURE = re.compile(r"\.(png|apng|gif|jpe?g|webp|svg)$", re.IGNORECASE)
BUDGET = 2_000_000  # bytes: the pictures may not grow the repository by more


def shown(md: Path, *, links: bool = False) -> list[Path]:
    """The local pictures a markdown file shows (![alt](path) or <img src=...>), resolved;
    ``links``: also those it links to ([text](path.png))."""
    found = [(embed or img, target or img) for embed, target, img in IMAGE_LINK.findall(md.read_text())]
    return [(md.parent / target.split("#")[0]).resolve() for embed, target in found
            if (embed or (links and PICTURE.search(target.split("#")[0]))) and "://" not in target]


def made_by_script() -> set[str]:
    """The names docs/make_images.sh copies to docs/images (its ``keep GLOB NAME`` lines)."""
    return set(re.findall(r"^\s*keep\s+\S+\s+([\w.-]+)\s*$", SCRIPT.read_text(), re.MULTILINE))


def test_every_picture_the_docs_show_exists():
    missing = [f"{md.name}: {p}" for md in MARKDOWN for p in shown(md, links=True) if not p.is_file()]
    assert missing == []
    assert sum(len(shown(md)) for md in MARKDOWN) >= len(made_by_script())  # the parser finds them


def test_docs_images_holds_what_the_script_makes_and_the_docs_show():
    on_disk = {p.name for p in IMAGES.iterdir()}
    assert len(made_by_script()) >= 15 and on_disk == made_by_script()
    everywhere = {p for md in MARKDOWN for p in shown(md)}
    assert [name for name in sorted(on_disk) if (IMAGES / name).resolve() not in everywhere] == []  # none unshown


def test_the_readme_shows_two_pictures_and_the_viewer_and_all_stay_small():
    readme = shown(ROOT / "README.md")
    assert len(readme) == 3 and all(p.parent == IMAGES.resolve() for p in readme)
    assert IMAGES.resolve() / "viewer.png" in readme
    assert sum(p.stat().st_size for p in IMAGES.iterdir()) < BUDGET


def test_the_script_pins_torchs_thread_count_before_it_records():
    # torch's CPU results depend on its thread count (1 thread vs 2 change the floats by ~1e-7 and the diff
    # summary's width by 5 px), and the default is the machine's core count: the script must fix it
    lines = SCRIPT.read_text().splitlines()
    pin = [i for i, line in enumerate(lines) if re.fullmatch(r"export OMP_NUM_THREADS=[1-9]\d*", line.strip())]
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith("dumpunet "))
    assert len(pin) == 1 and pin[0] < first


@pytest.mark.slow
@pytest.mark.recorder
def test_the_script_makes_every_picture_at_the_committed_size(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    if shutil.which("dumpunet") is None:
        pytest.skip("the dumpunet command is not installed (pip install -e .)")
    # a caller's thread count the script must override: with torch on 1 thread instead of the pinned 2, the
    # diff summary's colour bar reads "0.08641" instead of "0.0864", 5 px wider (seen in a CI run: 317 vs 312 px)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "images")], check=False, capture_output=True, text=True,
                          timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr
    made = {p.name for p in (tmp_path / "images").iterdir()}
    if "no viewer screenshot" in proc.stderr:  # no playwright or chromium here: the script says so and skips it
        made.add("viewer.png")
    assert made == {p.name for p in IMAGES.iterdir()}
    for name in sorted(made - ({"viewer.png"} if "no viewer screenshot" in proc.stderr else set())):
        new, old = Image.open(tmp_path / "images" / name), Image.open(IMAGES / name)
        # the pixels may differ on another kind of CPU; the layout may not, except that a colour bar's end label
        # prints the data's largest value, so a narrow picture (the diff summary) is as wide as its digits: the
        # pinned thread count makes them the same here, but another CPU kind or torch version computes other
        # floats (0.0864 vs 0.08641: 312 vs 317 px), so the width may move by a character or two
        assert (new.height, getattr(new, "n_frames", 1)) == (old.height, getattr(old, "n_frames", 1)), name
        assert abs(new.width - old.width) <= 12, (name, new.size, old.size)

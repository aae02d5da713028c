"""Every writer on a full, read-only or forbidden disk: one line naming the file, no temporary file left,
the files written before it listed in the manifest.

Two ways: a small tmpfs the test mounts (needs root; skipped elsewhere) for the real thing, and a
disk that fills up at the write call (every writer command of the CLI) for the rest.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic_stores import make_paired_store
from test_attention_view import store  # noqa: F401 - the attention store fixture
from test_output import writers

from dumpunet import files
from dumpunet.cli import main
from dumpunet.errors import OutputError

PAGE = 4096


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    return make_paired_store(tmp_path_factory.mktemp("out") / "sweep.zarr", labels=("IN04", "M00"))


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount command here")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` so that about ``leave`` bytes stay free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


def pages(folder: Path) -> int:
    return sum(math.ceil(p.stat().st_size / PAGE) for p in folder.iterdir())


def check_listed(out: Path, message: str = "") -> list[str]:
    """No temporary file in ``out``; the manifest lists the files there, all but those the message says. Return them."""
    names = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [n for n in names if n.endswith(".tmp")], names
    written = [n for n in names if n != "manifest.json"]
    listed = [e["file"] for e in json.loads((out / "manifest.json").read_text())["files"]] if "manifest.json" in names else []
    unlisted = re.search(r"(\d+) files? written (since it was last updated )?(are|is) not listed", message)
    assert set(listed) <= set(written)
    assert len(written) - len(listed) == (int(unlisted[1]) if unlisted else 0), (message, written, listed)
    return written


def test_every_writer_on_a_filling_tmpfs_stops_with_one_line_and_lists_what_it_wrote(girl, swept, store, tmp_path,  # noqa: F811
                                                                                   tmpfs):
    partial = 0
    for name, write in writers(girl, swept, store):
        need = pages(Path(write(tmp_path / f"room-{name}")[0].path).parent)
        fill(tmpfs, (need // 2) * PAGE)
        out = tmpfs / name
        with pytest.raises(OutputError) as err:
            write(out)
        message = str(err.value)
        assert "\n" not in message, name
        assert message.startswith(f"cannot write {out}/"), message
        assert "No space left on device; free some space or choose a folder on another disk" in message, message
        if "not listed" not in message and message.startswith(f"cannot write {out / 'manifest.json'}"):
            raise AssertionError(message)
        written = check_listed(out, message)
        partial += bool(written)
        if written and "not listed" not in message:
            n = len(written)
            assert message.endswith(f" ({n} file{'s' if n > 1 else ''} written before it "
                                    f"{'are' if n > 1 else 'is'} listed in manifest.json)"), message
        for p in tmpfs.iterdir():
            if p.is_dir():
                subprocess.run(["rm", "-rf", str(p)], check=True)
        (tmpfs / "filler").unlink()
    assert partial >= 3  # render, export, diff write several files: the disk filled up between them


def test_a_read_only_disk_is_one_line_for_a_new_folder_and_an_old_one(girl, tmp_path, tmpfs):
    (tmpfs / "old").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for out, start in ((tmpfs / "new", f"cannot create output folder {tmpfs / 'new'}: "),
                       (tmpfs / "old", f"cannot write {tmpfs / 'old'}/")):
        res = CliRunner().invoke(main, ["render", str(girl), "--blocks", "OUT11", "--steps", "20", "--quiet", "--out", str(out)])
        assert res.exit_code == 1
        assert res.output.startswith(f"Error: {start}") and res.output.count("\n") == 1, res.output
        assert "Read-only file system; choose a folder on a writable file system" in res.output
    res = CliRunner().invoke(main, ["render", str(girl), "--blocks", "OUT11", "--steps", "20", "--method", "PCA",
                                    "--pca-basis", str(tmpfs / "old" / "basis.npz"), "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert res.output == (f"Error: cannot save the PCA basis {tmpfs / 'old' / 'basis.npz'}: Read-only file system; "
                          "choose a folder on a writable file system (or give another --pca-basis)\n")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- a disk that fills up at the write call

class FullDisk:
    """``os.fdopen`` for :func:`dumpunet.files.write_atomic` that lets ``room`` files through, then fails.

    The failing file gets a few bytes before ``ENOSPC`` (or ``error``), as a real disk would.
    The manifest always fits (it is what the test reads); files opened for reading pass.
    """

    def __init__(self, room: int, error: int = errno.ENOSPC) -> None:
        self.room, self.error, self.failed = room, error, []
        self.real = os.fdopen
        self.lock = threading.Lock()

    def __call__(self, fd, mode="r", *args, **kw):
        fh = self.real(fd, mode, *args, **kw)
        name = os.readlink(f"/proc/self/fd/{fd}")
        if not set(mode) & set("wax+") or os.path.basename(name).startswith(".manifest.json."):
            return fh  # reads (the store's own files) and the manifest pass
        with self.lock:
            self.room -= 1
            if self.room >= 0:
                return fh
        self.failed.append(name)
        return Failing(fh, self.error)


class Failing:
    def __init__(self, fh, error):
        self.fh, self.error = fh, error

    def write(self, data):
        self.fh.write(bytes(data)[:3])
        self.fh.flush()
        raise OSError(self.error, os.strerror(self.error))

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def commands(girl, swept, attn):
    """(name, arguments, files it writes) of every writer command (heatmap draws no progress bar)."""
    yield "render", ["render", str(girl), "--blocks", "M00,OUT11", "--steps", "20", "--jobs", "1", "--quiet"], 2
    yield "render-pca", ["render", str(girl), "--blocks", "M00,OUT11", "--steps", "20", "--method", "PCA",
                         "--jobs", "1", "--quiet"], 2
    yield "export", ["export", str(girl), "--blocks", "M00", "--steps", "1,20", "--format", "npy", "--jobs", "1", "--quiet"], 2
    yield "diff", ["diff", str(swept), "--pair", "M00", "--blocks", "OUT11", "--steps", "20", "--quiet"], 3
    yield "sweep", ["render", str(swept), "--sweep", "--quiet"], 1
    yield "attention", ["attention", str(attn), "--layers", "IN01-M00", "--steps", "1", "--jobs", "1", "--quiet"], 2
    yield "heatmap", ["heatmap", str(attn), "--word", "1", "--guidance", "both", "--jobs", "1"], 4  # a PNG and a .npy per half
    yield "report", ["view", str(girl), "--jobs", "1", "--quiet", "--export"], 4


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_every_writer_command_turns_a_failing_write_into_one_line(girl, swept, store, tmp_path, monkeypatch,  # noqa: F811
                                                                  error):
    advice = {errno.ENOSPC: "free some space or choose a folder on another disk",
              errno.EACCES: "choose a folder you may write to",
              errno.EROFS: "choose a folder on a writable file system"}[error]
    for name, args, total in commands(girl, swept, store.path):
        room = 1 if total > 1 else 0
        disk = FullDisk(room, error)
        monkeypatch.setattr(files.os, "fdopen", disk)
        out = tmp_path / f"{name}-{error}"
        res = CliRunner().invoke(main, [*args, str(out)] if name == "report" else [*args, "--out", str(out)])
        monkeypatch.undo()
        assert res.exit_code == 1, (name, res.output)
        assert len(disk.failed) == 1, name
        failed = Path(disk.failed[0])
        target = failed.name.split(f".{os.getpid()}.")[0][1:]
        kept = " (1 file written before it is listed in manifest.json)" if room else ""
        assert res.output == f"Error: cannot write {out / target}: {os.strerror(error)}; {advice}{kept}\n", name
        assert len(check_listed(out, res.output)) == room, name


def test_a_pca_basis_that_cannot_be_saved_is_one_line_and_renders_nothing(girl, tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "fdopen", FullDisk(0, errno.EACCES))
    basis = tmp_path / "basis.npz"
    res = CliRunner().invoke(main, ["render", str(girl), "--blocks", "OUT11", "--steps", "20", "--method", "PCA",
                                    "--pca-basis", str(basis), "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert res.output == (f"Error: cannot save the PCA basis {basis}: Permission denied; choose a folder you may write "
                          "to (or give another --pca-basis)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

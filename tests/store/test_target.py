"""Where a recording goes: ``--out`` checked first, the store created whole, one recording at a time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dumpunet.errors import RecordError
from dumpunet.store import schema
from dumpunet.store.target import StoreLock, check_target, create_store
from dumpunet.store.writer import StoreWriter

HEADER = {schema.HEADER_KEY: schema.header(writer="test", created="2026-01-01T00:00:00+00:00").to_json()}


def make_store(path):
    with StoreLock(path):
        create_store(path, HEADER)
    return path


def child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_check_target_refuses_what_record_must_not_touch(tmp_path, monkeypatch):
    store = make_store(tmp_path / "a.zarr")
    (tmp_path / "dangling.zarr").symlink_to(tmp_path / "nowhere.zarr")
    (tmp_path / "link.zarr").symlink_to(store)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    cases = {
        "": "--out is an empty path; give the store a name, e.g. --out girl.zarr",
        str(tmp_path / "dangling.zarr"): f"{tmp_path / 'dangling.zarr'} is a symbolic link to {tmp_path / 'nowhere.zarr'}, "
                                         "which does not exist; give --out the store's real path or a new name",
        str(tmp_path / "link.zarr"): f"{tmp_path / 'link.zarr'} is a symbolic link to {store}; "
                                     "give --out the store's real path or a new name",
        str(tmp_path / "foreign"): f"{tmp_path / 'foreign'} exists and is not a dumpunet store; "
                                   "--overwrite only replaces dumpunet stores",
        str(tmp_path / "no" / "x.zarr"): f"cannot create {tmp_path / 'no' / 'x.zarr'}: folder {tmp_path / 'no'} does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(RecordError) as err:
            check_target(path, overwrite=True)
        assert str(err.value) == message
    with pytest.raises(RecordError, match="already exists; choose another --out or pass --overwrite"):
        check_target(store, overwrite=False)
    monkeypatch.chdir(store)
    for here in (".", "..", str(store)):
        with pytest.raises(RecordError, match="is the folder you are in"):
            check_target(here, overwrite=True)
    monkeypatch.chdir(tmp_path)
    assert check_target(store, overwrite=True) == store
    assert check_target(tmp_path / "empty", overwrite=True) == tmp_path / "empty"
    assert check_target(tmp_path / "new.zarr", overwrite=False) == tmp_path / "new.zarr"
    assert (tmp_path / "link.zarr").resolve() == store and schema.open_root(store) is not None
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_a_new_store_has_its_header_from_the_first_moment_and_overwrite_leaves_nothing_beside(tmp_path):
    path = make_store(tmp_path / "a.zarr")
    assert schema.open_root(path).attrs[schema.HEADER_KEY]["writer"] == "test"
    (path / "junk").mkdir()
    with StoreLock(path):
        create_store(path, {schema.HEADER_KEY: {**HEADER[schema.HEADER_KEY], "writer": "second"}}, overwrite=True)
    assert schema.open_root(path).attrs[schema.HEADER_KEY]["writer"] == "second"
    assert sorted(p.name for p in path.iterdir()) == ["zarr.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


KILLED_CREATE = """
import os, sys, time
from pathlib import Path
from dumpunet.store import schema, target
real = os.rename
def stuck(src, dst):
    if str(src).endswith(".new"):
        print("renaming", flush=True)
        time.sleep(600)
    real(src, dst)
target.os.rename = stuck
path = Path(sys.argv[1])
with target.StoreLock(path):
    target.create_store(path, {schema.HEADER_KEY: schema.header(writer="killed", created="x").to_json()}, overwrite=True)
"""


@pytest.mark.parametrize("existing", [False, True])
def test_a_kill_while_creating_leaves_no_half_store_and_the_next_run_cleans_up(tmp_path, existing):
    path = tmp_path / "a.zarr"
    if existing:
        make_store(path)
    proc = child(KILLED_CREATE, str(path))
    try:
        assert proc.stdout.readline() == "renaming\n", proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(60)
    assert not path.exists()  # neither a zarr.json without a header nor a half-replaced store
    left = sorted(p.name for p in tmp_path.iterdir())
    hidden = [f".a.zarr.{proc.pid}.new"] + ([f".a.zarr.{proc.pid}.old"] if existing else [])
    assert left == sorted([*hidden, ".a.zarr.lock"])
    assert (tmp_path / hidden[0] / "zarr.json").exists()
    make_store(path)  # the dead recording's lock is taken over, its leftovers removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]
    assert schema.open_root(path).attrs[schema.HEADER_KEY]["writer"] == "test"


HOLDER = """
import sys, time
from dumpunet.store.target import StoreLock
with StoreLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_refuses_while_the_first_lives_and_takes_over_once_it_is_dead(tmp_path):
    path = make_store(tmp_path / "a.zarr")
    proc = child(HOLDER, str(path))
    try:
        assert proc.stdout.readline() == "locked\n", proc.stderr.read()
        message = (f"{path} is being recorded by process {proc.pid} (lock file {tmp_path / '.a.zarr.lock'}); "
                   "wait for it to finish or stop it, or choose another --out")
        with pytest.raises(RecordError) as err:
            StoreLock(path).acquire()
        assert str(err.value) == message
        with pytest.raises(RecordError) as err:
            StoreLock(path).check_free()
        assert str(err.value) == message
        with pytest.raises(RecordError) as err:
            StoreWriter(path, model={}, versions={}, overwrite=True)
        assert str(err.value) == message
        assert schema.open_root(path).attrs[schema.HEADER_KEY]["writer"] == "test"  # not deleted under its owner
    finally:
        proc.kill()
        proc.wait(60)
    lock = tmp_path / ".a.zarr.lock"
    assert lock.read_text() == f"{proc.pid}\n"  # a dead owner's lock file stays behind ...
    StoreLock(path).check_free()
    with StoreLock(path):  # ... and is taken over
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()
    w = StoreWriter(path, model={}, versions={}, overwrite=True)
    assert lock.read_text() == f"{os.getpid()}\n"
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]


def test_the_writer_checks_the_target_before_it_makes_a_lock_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dangling.zarr").symlink_to(tmp_path / "nowhere.zarr")
    for bad in ("", ".", "dangling.zarr"):
        with pytest.raises(RecordError):
            StoreWriter(bad, model={}, versions={}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.zarr"]

"""Disk speed: measured with write + fsync, cached per file system in the cache folder."""

from __future__ import annotations

import json

from dumpunet import diskspeed


def test_measure_writes_and_removes_its_file(tmp_path):
    speed = diskspeed.measure_write_speed(tmp_path, 1 << 20)
    assert speed > 0
    assert list(tmp_path.iterdir()) == []


def test_speed_is_measured_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    measured = []

    def fake(folder, nbytes=diskspeed.MEASURE_BYTES):
        measured.append((folder, nbytes))
        return 123e6

    monkeypatch.setattr(diskspeed, "measure_write_speed", fake)
    cache = tmp_path / "cache"
    assert diskspeed.cached_speed(tmp_path, cache=cache, measure=False) is None
    assert measured == []
    assert diskspeed.cached_speed(tmp_path, cache=cache) == 123e6
    assert diskspeed.cached_speed(tmp_path, cache=cache) == 123e6
    assert measured == [(tmp_path, diskspeed.MEASURE_BYTES)]
    (entry,) = json.loads((cache / "dumpunet" / "disk-speed.json").read_text()).values()
    assert entry["bytes_per_second"] == 123e6 and entry["measured_in"] == str(tmp_path.resolve())


def test_a_damaged_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(diskspeed, "measure_write_speed", lambda folder, nbytes=0: 5e6)
    file = tmp_path / "dumpunet" / "disk-speed.json"
    file.parent.mkdir()
    file.write_text("{not json")
    assert diskspeed.cached_speed(tmp_path, cache=tmp_path) == 5e6
    assert json.loads(file.read_text())


def test_cache_dir_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert diskspeed.cache_dir() == tmp_path

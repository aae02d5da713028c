"""The duration half of the size estimate: disk time, and the disk-bound warning."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from dumpunet import diskspeed  # noqa: E402
from dumpunet.recorder import job as recording  # noqa: E402
from dumpunet.recorder.job import CUT_BYTES_OPTIONS, DiskTime, Estimate  # noqa: E402

pytestmark = pytest.mark.recorder


def _estimate(block_bytes: int, calls: int = 20, runs: int = 1) -> Estimate:
    return Estimate(runs=runs, calls=calls, blocks=25, block_bytes=block_bytes, attention_layers=0, attention_bytes=0,
                    self_attention_bytes=0, shape_note="512x512", unet_calls=calls)


def _job(tmp_path: Path, device: str) -> SimpleNamespace:
    return SimpleNamespace(req=SimpleNamespace(out=tmp_path / "r.zarr"), pipe=SimpleNamespace(device=SimpleNamespace(type=device)))


def test_disk_time_divides_bytes_by_the_given_speed_and_warns_when_a_gpu_outruns_the_disk(tmp_path):
    est = _estimate(2_720_000_000)  # SD1.5-512, blocks + cross-attention, 20 steps
    t = recording.disk_time(_job(tmp_path, "cuda"), est, disk_speed_mb=1000)
    assert t is not None and t.seconds == pytest.approx(2.72) and t.disk_bound
    duration, warning = t.lines()
    assert duration == "disk time: at least 2.7 s to write 2.72 GB at 1000 MB/s (--disk-speed)"
    assert warning.startswith("warning: disk-bound: the disk needs 136 ms per U-Net call, a GPU computes one in about 50 ms")
    assert warning.endswith("cut bytes with " + ", ".join(CUT_BYTES_OPTIONS))
    fast = recording.disk_time(_job(tmp_path, "cuda"), est, disk_speed_mb=3000)
    assert fast is not None and not fast.disk_bound and len(fast.lines()) == 1  # 45 ms per call: the GPU is slower


def test_a_cpu_run_gets_the_duration_but_no_disk_bound_warning(tmp_path):
    t = recording.disk_time(_job(tmp_path, "cpu"), _estimate(2_720_000_000), disk_speed_mb=100)
    assert t is not None and not t.disk_bound and [line.split(":")[0] for line in t.lines()] == ["disk time"]


def test_small_recordings_are_not_measured_and_large_ones_once(tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(diskspeed, "measure_write_speed", lambda folder, nbytes=0: measured.append(folder) or 500e6)
    cache = tmp_path / "cache"
    assert recording.disk_time(_job(tmp_path, "cuda"), _estimate(10_000_000), disk_speed_mb=None, cache=cache) is None
    assert measured == []
    big = _estimate(1_000_000_000, runs=2)
    for _ in range(2):
        t = recording.disk_time(_job(tmp_path, "cuda"), big, disk_speed_mb=None, cache=cache)
        assert t is not None and t.seconds == pytest.approx(4.0) and t.calls == 40
        assert t.source == f"measured in {tmp_path.resolve()}, cached; --disk-speed overrides"
    assert measured == [tmp_path.resolve()]


def test_unet_calls_not_recorded_still_give_the_disk_time():
    est = _estimate(1_000_000_000, calls=5)
    t = DiskTime(est.total_bytes, 20, 1e9, "--disk-speed", call_seconds=0.05)
    assert t.seconds == pytest.approx(1.0) and not t.disk_bound  # 20 calls x 50 ms = 1 s: the disk keeps up

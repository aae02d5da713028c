"""--jobs on export, attention, heatmap and view --export: a pool of that many threads, the same files for any count."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_attention_view import _resolution_store, write_store

from dumpunet.analyzer import pool
from dumpunet.cli import main


@pytest.fixture(scope="module")
def attn(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("jobs") / "attn.zarr").path


@pytest.fixture
def pools(monkeypatch) -> list[int]:
    """The worker counts of the thread pools that :func:`~dumpunet.analyzer.pool.run_parallel` starts."""
    started: list[int] = []

    class Spy(pool.ThreadPoolExecutor):
        def __init__(self, max_workers: int, **kw):
            started.append(max_workers)
            super().__init__(max_workers, **kw)

    monkeypatch.setattr(pool, "ThreadPoolExecutor", Spy)
    return started


def _folder(path: Path) -> tuple[dict[str, bytes], list[dict]]:
    files = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "manifest.json"}
    return files, json.loads((path / "manifest.json").read_text())["files"]


def _same_for_one_and_two_jobs(tmp_path: Path, pools: list[int], *args: str, out_flag: str = "--out") -> dict[str, bytes]:
    """Run the command with --jobs 1 and --jobs 2 into two folders; return the files after checking they agree."""
    written = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        pools.clear()
        res = CliRunner().invoke(main, [*args, out_flag, str(out), "--jobs", str(jobs), "--quiet", "--json"])
        assert res.exit_code == 0, res.output
        assert res.stderr == ""
        assert pools and set(pools) == {jobs}, pools  # the work ran on a pool of --jobs threads
        written[jobs] = (_folder(out), [e["file"] for e in json.loads(res.stdout)])
    (files, manifest), listed = written[2]
    assert len(files) > 1
    assert written[1] == written[2]  # every byte, every manifest entry, the --json listing in the same order
    assert listed == [e["file"] for e in manifest] or sorted(listed) == [e["file"] for e in manifest]
    return files


@pytest.mark.parametrize("fmt", ["bin", "npy", "safetensors"])
def test_export_blocks(pair, tmp_path, pools, fmt):
    files = _same_for_one_and_two_jobs(tmp_path, pools, "export", str(pair), "--blocks", "IN01,OUT11",
                                       "--steps", "5,20", "--guidance", "both", "--channels", "0-2", "--format", fmt)
    # bin: a file per image, block, step, half and channel; npy/safetensors: one per block and step
    assert len(files) == (2 * 2 * 2 * 2 * 3 if fmt == "bin" else 2 * 2)


@pytest.mark.parametrize("fmt", ["bin", "npy"])
def test_export_attention_layers(attn, tmp_path, pools, fmt):
    files = _same_for_one_and_two_jobs(tmp_path, pools, "export", str(attn), "--layers", "IN01.attn2,M00.attn2",
                                       "--guidance", "both", "--format", fmt)
    # 2 layers x 2 steps; bin: a file per half and head x token (2 heads x 10 tokens)
    assert len(files) == (2 * 2 * 2 * 2 * 10 if fmt == "bin" else 2 * 2)


@pytest.mark.parametrize("extra", [[], ["--average", "2-norm"], ["--auto-scope", "run"], ["--query", "0.5,0.5"]])
def test_attention_grids(attn, tmp_path, pools, extra):
    _same_for_one_and_two_jobs(tmp_path, pools, "attention", str(attn), "--guidance", "both", *extra)


def test_attention_aggregate(tmp_path, pools):
    st, _, _ = _resolution_store(tmp_path / "r.zarr")
    files = _same_for_one_and_two_jobs(tmp_path, pools, "attention", str(st.path), "--aggregate", "resolution",
                                       "--tokens", "pink,girl")
    assert {name.rsplit(".", 1)[1] for name in files} == {"png", "npy"}


@pytest.mark.parametrize("what", [["--word", "1,2,4"], ["--word", "1,2", "--merge"], ["--query", "0.3,0.6"]])
def test_heatmap(attn, tmp_path, pools, what):  # token indices: both halves hold them
    _same_for_one_and_two_jobs(tmp_path, pools, "heatmap", str(attn), "--guidance", "both", *what)


def test_heatmap_word_missing_from_one_half_writes_nothing_with_several_jobs(attn, tmp_path):
    res = CliRunner().invoke(main, ["heatmap", str(attn), "--word", "pink", "--guidance", "both", "--jobs", "2",
                                    "--out", str(tmp_path / "h")])
    assert res.exit_code == 1 and "'pink' is not a word of the prompt" in res.output, res.output
    assert not (tmp_path / "h").exists()


def test_view_export(attn, tmp_path, pools):
    files = _same_for_one_and_two_jobs(tmp_path, pools, "view", str(attn), "--steps", "1", out_flag="--export")
    assert "report.js" in files and any(name.startswith("view") for name in files)


@pytest.mark.parametrize("jobs", [1, 3])
def test_after_a_failure_no_item_starts_and_the_first_error_in_order_is_raised(jobs):
    started, done = [], []

    def work(i: int) -> int:
        started.append(i)
        if i in (1, 4):
            time.sleep(0.2)  # the caller queues the next items meanwhile
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 1"):
        pool.run_parallel(range(20), work, jobs=jobs, done=done)
    assert started[:1] == [0] and 1 in started
    # one thread: item 2 is queued while item 1 runs, and skipped once item 1 has failed
    assert max(started) < (2 if jobs == 1 else 2 * jobs + 1), started
    assert done == sorted(i for i in started if i not in (1, 4))

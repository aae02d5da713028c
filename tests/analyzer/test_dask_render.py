"""render/export/diff --dask: the thread pool's files byte for byte, chunks read on the workers."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic_stores import make_paired_store, make_store

from dumpunet.analyzer.selection import Selection
from dumpunet.cli import main

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes: a chunk read there is not a read in this (the client) process."""
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask-stores")
    return [make_store(root / "a.zarr", n_images=2), make_store(root / "b.zarr", n_images=2, seed=5),
            make_paired_store(root / "pair.zarr", n_images=2)]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def opened_on_workers(cluster) -> dict[str, int]:
    """How many selections each worker process opened by path."""

    def count():
        from dumpunet.analyzer.dask_run import open_source

        return open_source.cache_info().misses

    with distributed.Client(cluster) as client:
        return client.run(count)


RENDER = ["--blocks", "IN00,OUT11", "--steps", "5,20", "--images", "0-1", "--guidance", "both", "--quiet"]


def test_render_on_dask_writes_the_thread_pools_files(cluster, stores, tmp_path, monkeypatch):
    run(["render", *map(str, stores[:2]), *RENDER, "--out", str(tmp_path / "local")])
    before = sum(opened_on_workers(cluster).values())
    monkeypatch.setattr(Selection, "read", lambda self, slab: pytest.fail(f"the client read {slab.name}"))
    run(["render", *map(str, stores[:2]), *RENDER, "--scheduler", cluster.scheduler_address, "--out",
         str(tmp_path / "dask")])
    local, dask = files_of(tmp_path / "local"), files_of(tmp_path / "dask")
    assert sorted(dask) == sorted(local)
    assert len(local) == 2 * (2 * 2 * 2 * 2 + 1)  # grids of two stores, and their manifests
    assert dask == local  # PNGs byte for byte, and the manifests
    assert sum(opened_on_workers(cluster).values()) > before  # the workers opened the stores themselves


@pytest.mark.parametrize("command", [
    ["export", "{a}", "--blocks", "IN00,OUT11", "--steps", "5,20", "--images", "0-1", "--guidance", "both"],
    ["export", "{a}", "--blocks", "OUT09-OUT11", "--format", "npy", "--guidance", "both"],
    ["diff", "{pair}", "--steps", "1,20", "--images", "0-1", "--export", "safetensors"],
    ["diff", "{a}", "{b}:main", "--blocks", "IN00,OUT11", "--steps", "5,20", "--images", "0-1", "--guidance", "both"],
], ids=["export-bin", "export-npy", "diff", "diff-two-stores"])
def test_export_and_diff_on_dask_write_the_local_files(cluster, stores, tmp_path, monkeypatch, command):
    args = [a.format(a=stores[0], b=stores[1], pair=stores[2]) for a in command] + ["--quiet"]
    run([*args, "--out", str(tmp_path / "local")])
    monkeypatch.setattr(Selection, "read", lambda self, slab: pytest.fail(f"the client read {slab.name}"))
    run([*args, "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "dask")])
    local, dask = files_of(tmp_path / "local"), files_of(tmp_path / "dask")
    assert len(local) > 3
    assert dask == local


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["render", "{a}"], ["export", "{a}"], ["diff", "{pair}"]])
def test_a_scheduler_that_is_not_there_is_one_line_and_writes_nothing(stores, tmp_path, command):
    out = tmp_path / "none"
    args = [a.format(a=stores[0], pair=stores[2]) for a in command]
    result = CliRunner().invoke(main, [*args, "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no dask scheduler answers at tcp://127.0.0.1:"), lines
    assert not out.exists()


def test_dask_without_scheduler_starts_a_local_cluster_of_jobs_workers(stores, tmp_path):
    args = ["render", str(stores[1]), "--blocks", "OUT11", "--steps", "20", "--images", "0", "--quiet"]
    run([*args, "--out", str(tmp_path / "local")])
    result = CliRunner().invoke(main, [*args, "--dask", "--jobs", "1", "--json", "--out", str(tmp_path / "dask")])
    assert result.exit_code == 0, result.output
    assert [e["file"] for e in json.loads(result.stdout)] == ["OUT11-step020-img0-cond-hsl-auto01.png"]
    assert files_of(tmp_path / "dask") == files_of(tmp_path / "local")


def test_skip_damaged_on_dask_skips_and_warns_as_the_thread_pool(cluster, stores, tmp_path):
    import shutil

    store = shutil.copytree(stores[1], tmp_path / "damaged.zarr")
    chunks = sorted(p for p in (store / "runs/main/blocks/OUT11/output").rglob("c*") if p.is_file())
    chunks[-1].unlink()  # the last recorded step of OUT11: a chunk that is missing
    args = ["render", str(store), "--blocks", "OUT09-OUT11", "--steps", "10,20", "--guidance", "both",
            "--skip-damaged", "--quiet"]
    results = {}
    for kind, extra in {"local": [], "dask": ["--scheduler", cluster.scheduler_address]}.items():
        result = CliRunner().invoke(main, [*args, *extra, "--out", str(tmp_path / kind)])
        assert result.exit_code == 0, result.output
        results[kind] = sorted(line for line in result.stderr.splitlines() if line.startswith("warning: skipped"))
    assert results["dask"] == results["local"] and len(results["local"]) >= 1
    local = files_of(tmp_path / "local")
    assert files_of(tmp_path / "dask") == local
    assert len(local) == 3 * 2 * 2 * 2 + 1 - len(results["local"])  # the grids less the skipped ones, and the manifest


def test_a_store_recorded_again_at_the_same_path_is_a_new_source(tmp_path):
    import os

    from dumpunet.analyzer.dask_run import Source, open_source
    from dumpunet.analyzer.pick import Pick
    from dumpunet.store import open_store

    path = make_store(tmp_path / "again.zarr")
    first = Source.of(open_store(path), Pick(blocks="OUT11"))
    assert open_source(first) is open_source(first)  # opened once per process
    st = os.stat(path / "zarr.json")
    os.utime(path / "zarr.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # as a new recording leaves it
    again = Source.of(open_store(path), Pick(blocks="OUT11"))
    assert again != first and again.path == first.path == path.resolve()
    assert open_source(again) is not open_source(first)

"""dumpunet stats: per-channel statistics and attention entropy on dask, checked against numpy on the same arrays."""

from __future__ import annotations

import csv
import json
import socket

import numpy as np
import pytest
from click.testing import CliRunner

import dumpunet
from dumpunet.analyzer.pick import Pick
from dumpunet.cli import main
from synthetic_stores import make_store
from test_store import spy_reads


pytest.importorskip("xarray")
pytest.importorskip("dask")

PICK = Pick(blocks="IN03,OUT11", steps="5,20", guidance="both")


def expected_rows(paths, pick: Pick) -> list[dict]:
    """The block table computed with numpy from the reader's arrays."""
    rows = []
    for p in paths:
        store = dumpunet.open(p)
        r = store.run()
        for block in store.select_blocks(pick.blocks):
            for step in store.select_steps(pick.steps):
                k = r.calls.index(step)
                for image in range(r.n_images):
                    for g in pick.halves or r.guidance_labels:
                        x = store.features(block, step, image=image, guidance=g).astype(np.float64)
                        for ch, m in enumerate(x):
                            rows.append({"store": str(p), "run": "main", "block": block, "step": step,
                                         "timestep": float(r.calls.timestep[k]), "image": image, "guidance": g,
                                         "channel": ch, "mean": m.mean(), "std": m.std(), "absmax": np.abs(m).max(),
                                         "l2": np.sqrt((m * m).sum())})
    return rows


def key(row: dict) -> tuple:
    return (row["store"], row["block"], row["step"], row["image"], row["guidance"], row["channel"])


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert sorted(map(key, got)) == sorted(map(key, want))
    by_key = {key(r): r for r in got}
    for w in want:
        g = by_key[key(w)]
        assert g["timestep"] == w["timestep"]
        for stat in ("mean", "std", "absmax", "l2"):
            assert g[stat] == pytest.approx(w[stat], rel=1e-12, abs=1e-12), (key(w), stat)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stats")
    return [make_store(d / "a.zarr", n_images=2), make_store(d / "b.zarr", n_images=2, seed=3)]


def test_block_stats_equal_numpy_on_the_same_arrays(stores):
    from dumpunet.analyzer.stats import block_stats

    rows, attention = block_stats(stores, PICK)
    assert attention == []
    assert len(rows) == 2 * 2 * 2 * 2 * 2 * 4  # stores x blocks x steps x images x halves x 4 channels
    assert_same(rows, expected_rows(stores, PICK))


def test_a_local_cluster_reads_each_chunk_once_on_its_workers(stores, monkeypatch):
    from distributed import LocalCluster

    from dumpunet.analyzer.stats import block_stats

    reads = spy_reads(monkeypatch, roots=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, host="127.0.0.1", protocol="tcp",
                      dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        rows, _ = block_stats(stores, PICK, scheduler=cluster.scheduler_address)
    chunks = [(root, key) for root, key in reads if "/blocks/" in key and "/c." in key]
    assert len(chunks) == len(set(chunks)) == 2 * 2 * 2 * 2 * 2  # stores x blocks x steps x images x halves
    assert_same(rows, expected_rows(stores, PICK))


def test_cli_writes_the_table_and_its_manifest(stores, tmp_path):
    out = tmp_path / "stats"
    res = CliRunner().invoke(main, ["stats", *map(str, stores), "--blocks", "OUT11", "--steps", "20", "--images", "1",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    with open(out / "stats.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    pick = Pick(blocks="OUT11", steps="20")
    want = [r for r in expected_rows(stores, Pick(blocks="OUT11", steps="20")) if r["image"] == 1 and r["guidance"] == "cond"]
    got = [{**r, "step": int(r["step"]), "image": int(r["image"]), "channel": int(r["channel"]),
            **{k: float(r[k]) for k in ("timestep", "mean", "std", "absmax", "l2")}} for r in table]
    assert_same(got, want)
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert [(f["file"], f["kind"], f["rows"], f["blocks"]) for f in manifest] == [("stats.csv", "stats", 8, pick.blocks)]


def test_attention_entropy_per_head_and_token_equals_numpy(tmp_path):
    from test_dataset import TOKENS, attention_store, qk

    from dumpunet.analyzer.stats import block_stats

    p = attention_store(tmp_path / "a.zarr")
    _, rows = block_stats([p], Pick(blocks="IN00", steps="2-3", guidance="both"), layers="IN01.attn2")
    assert len(rows) == 2 * 2 * 2 * len(TOKENS)  # steps x halves x heads x tokens
    for row in rows:
        a = qk(10 * row["step"])[["uncond", "cond"].index(row["guidance"]), 0, row["head"], :, row["token"]].astype(np.float64)
        q = a / a.sum()
        assert row["entropy"] == pytest.approx(-(q * np.log(q)).sum(), rel=1e-12)
        assert row["token_label"] == TOKENS[row["token"]] and row["layer"] == "IN01.attn2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheduler, message", [
    (f"tcp://127.0.0.1:{free_port()}", "no dask scheduler answers at tcp://127.0.0.1:"),
    ("sched", "unknown scheduler 'sched' (valid: threads, local, or an address tcp://HOST:PORT)"),
])
def test_a_scheduler_that_is_not_there_is_one_line_and_writes_nothing(stores, tmp_path, scheduler, message):
    out = tmp_path / "none"
    res = CliRunner().invoke(main, ["stats", str(stores[0]), "--blocks", "OUT11", "--scheduler", scheduler, "--out", str(out)])
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: {message}") and res.output.count("\n") == 1, res.output
    assert not out.exists()


def test_a_sampler_with_two_calls_per_step_gives_each_steps_first_call(tmp_path):
    from test_dataset import attention_store

    from dumpunet.analyzer.stats import block_stats

    p = attention_store(tmp_path / "h.zarr", substeps=True)
    rows, _ = block_stats([p], Pick(blocks="IN00", steps="2"))
    assert_same(rows, expected_rows([p], Pick(blocks="IN00", steps="2")))  # the reader's features: substep 0


def test_parquet_without_pyarrow_is_one_line_and_writes_nothing(stores, tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pyarrow is installed")
    out = tmp_path / "pq"
    res = CliRunner().invoke(main, ["stats", str(stores[0]), "--blocks", "OUT11", "--format", "parquet", "--out", str(out)])
    assert res.exit_code == 1 and res.output == "Error: --format parquet needs pyarrow (pip install pyarrow)\n"
    assert not out.exists()

"""Every read command on an s3:// store whose server only ``--storage-option`` names: the local copy's outputs.

The environment's ``AWS_ENDPOINT_URL`` points at a closed port on 127.0.0.1, so a command (or a dask
worker) that opens the URL without the storage options fails instead of silently reaching the
server through the environment. Each test runs the command on the local folder and on its upload
and compares what it wrote, byte for byte.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_stores import make_paired_store, make_store
from test_attention_view import write_store as write_attention_store

import dumpunet
from dumpunet.cli import main
from dumpunet.errors import OptionError
from dumpunet.store.location import StoreUrl


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("remote-cmds")
    return {"girl": make_store(root / "girl.zarr", n_images=2), "pair": make_paired_store(root / "pair.zarr"),
            "attn": write_attention_store(root / "attn.zarr").path}


@pytest.fixture
def remote(s3, stores, monkeypatch):
    """Upload the stores; return (name -> URL, the --storage-option arguments); the environment reaches no server."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint, skip_instance_cache=True)
    urls = {}
    for name, path in stores.items():
        fs.put(str(path), f"{s3.bucket}/{path.name}", recursive=True)
        urls[name] = f"s3://{s3.bucket}/{path.name}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return urls, ["--storage-option", f"endpoint_url={s3.endpoint}"]


def cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0 and res.exception is None, res.output
    return res.output


def files_of(folder: Path, *, skip: tuple[str, ...] = ("manifest.json",)) -> dict[str, bytes]:
    out = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}
    assert out, f"nothing written to {folder}"
    return out


def both(stores: dict[str, Path], remote, name: str, args: list[str], tmp_path: Path, *, remote_args: tuple[str, ...] = ()):
    """Run ``args`` (``{}`` = the store) on the local store and on its URL; return both output folders' files."""
    urls, options = remote
    cli(*[a.format(str(stores[name])) for a in args], "--out", str(tmp_path / "local"))
    cli(*[a.format(urls[name]) for a in args], *options, *remote_args, "--out", str(tmp_path / "remote"))
    return files_of(tmp_path / "local"), files_of(tmp_path / "remote")


def test_info_and_validate(stores, remote):
    urls, options = remote
    doc = json.loads(cli("info", urls["girl"], *options, "--json"))
    local = json.loads(cli("info", str(stores["girl"]), "--json"))
    assert doc.pop("path") == urls["girl"] and local.pop("path") == str(stores["girl"])
    assert doc == local
    assert cli("validate", urls["girl"], *options) == f"{urls['girl']}: ok\n"
    assert cli("validate", urls["attn"], *options, "--quick") == f"{urls['attn']}: ok\n"


@pytest.mark.parametrize("command", [
    ["render", "{}", "--blocks", "IN04,OUT11", "--steps", "5,20", "--images", "0-1", "--quiet"],
    ["export", "{}", "--blocks", "OUT11", "--steps", "20", "--format", "npy", "--quiet"],
    ["diff", "{}", "--blocks", "IN04,OUT11", "--steps", "20", "--quiet"],
    ["diff", "{}:layered", "{}:base", "--blocks", "IN04,OUT11", "--steps", "20", "--quiet"],  # STORE:RUN URLs
    ["attention", "{}", "--blocks", "IN01-M00", "--steps", "1", "--tokens", "hair", "--quiet"],
    ["heatmap", "{}", "--word", "1", "--layers", "M00", "--guidance", "both", "--quiet"],
    ["view", "{}", "--blocks", "OUT11", "--steps", "20", "--quiet"],
])
def test_each_command_writes_the_local_files(stores, remote, tmp_path, command):
    name = {"diff": "pair", "attention": "attn", "heatmap": "attn"}.get(command[0], "girl")
    if command[0] == "view":  # --export is view's --out
        urls, options = remote
        cli(command[0], str(stores[name]), *command[2:], "--export", str(tmp_path / "local"))
        cli(command[0], urls[name], *command[2:], *options, "--export", str(tmp_path / "remote"))
        local, far = files_of(tmp_path / "local", skip=("manifest.json", "index.html", "report.js")), \
            files_of(tmp_path / "remote", skip=("manifest.json", "index.html", "report.js"))
    else:
        local, far = both(stores, remote, name, command, tmp_path)
    assert far == local
    assert any(k.endswith((".png", ".npy")) for k in local)


@pytest.mark.parametrize("command", [
    ["render", "{}", "--blocks", "IN04,OUT11", "--steps", "5,20", "--images", "0-1", "--quiet"],
    ["export", "{}", "--blocks", "OUT11", "--steps", "10,20", "--format", "npy", "--quiet"],
    ["diff", "{}", "--blocks", "IN04,OUT11", "--steps", "20", "--quiet"],
])
def test_dask_workers_read_the_url_with_the_storage_options(stores, remote, tmp_path, command):
    """A LocalCluster started by the command: its workers see only the environment's dead endpoint."""
    name = "pair" if command[0] == "diff" else "girl"
    jobs = () if command[0] == "export" else ("--jobs", "1")  # export's cluster has a worker per CPU
    local, far = both(stores, remote, name, command, tmp_path, remote_args=("--dask", *jobs))
    assert far == local


def test_stats_of_urls_equal_the_local_table(stores, remote, tmp_path):
    urls, options = remote
    args = ["--blocks", "IN04,OUT11", "--steps", "5,20", "--guidance", "both"]
    cli("stats", str(stores["girl"]), *args, "--out", str(tmp_path / "local"))
    cli("stats", urls["girl"], *args, *options, "--out", str(tmp_path / "remote"))
    local = (tmp_path / "local/stats.csv").read_text().splitlines()
    far = (tmp_path / "remote/stats.csv").read_text().splitlines()
    assert len(local) > 16  # 2 blocks x 2 steps x 2 images x 2 halves, channels each
    assert _but_store(tmp_path / "remote/stats.csv") == _but_store(tmp_path / "local/stats.csv")
    assert far[1].startswith(f"{urls['girl']},main,")
    manifest = json.loads((tmp_path / "remote/manifest.json").read_text())
    assert manifest["files"][0]["stores"] == [urls["girl"]]


def test_stats_on_a_scheduler_reads_on_workers_with_the_options(stores, remote, tmp_path):
    distributed = pytest.importorskip("distributed")
    urls, options = remote
    args = ["--blocks", "OUT11", "--steps", "20"]
    cli("stats", str(stores["girl"]), *args, "--out", str(tmp_path / "local"))
    with distributed.LocalCluster(processes=True, n_workers=1, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        cli("stats", urls["girl"], *args, *options, "--scheduler", cluster.scheduler_address, "--out", str(tmp_path / "remote"))
    assert _but_store(tmp_path / "remote/stats.csv") == _but_store(tmp_path / "local/stats.csv")


def _but_store(table: Path) -> list[str]:
    """The CSV's lines without their first column (the store)."""
    return [line.split(",", 1)[1] for line in table.read_text().splitlines()]


def test_open_dataset_and_to_xarray_take_storage_options(stores, remote, s3):
    urls, _ = remote
    options = {"endpoint_url": s3.endpoint}
    local = dumpunet.open_dataset(stores["girl"], blocks="OUT11")["OUT11"].sel(step=20, guidance="cond").values
    ds = dumpunet.open_dataset(urls["girl"], blocks="OUT11", storage_options=options)
    assert ds.attrs["store"] == urls["girl"]
    assert np.array_equal(ds["OUT11"].sel(step=20, guidance="cond").values, local)
    store = dumpunet.open(urls["girl"], storage_options=options)
    assert np.array_equal(store.to_xarray(blocks="OUT11")["OUT11"].sel(step=20, guidance="cond").values, local)
    many = dumpunet.open_dataset([urls["girl"], stores["girl"]], blocks="OUT11", storage_options=options)
    assert list(many["store"].values) == list(many["run"].values) == [urls["girl"], str(stores["girl"].resolve())]
    assert np.array_equal(many["OUT11"].sel(step=20, guidance="cond").values, np.stack([local, local]))
    with pytest.raises(OptionError, match="storage options are for stores given as URLs"):
        dumpunet.open_dataset([stores["girl"], stores["pair"]], blocks="OUT11", storage_options=options)
    assert StoreUrl(urls["girl"], tuple(options.items())) != StoreUrl(urls["girl"])  # the options tell them apart


def test_open_dataset_computes_on_dask_workers_with_the_options(stores, remote, s3):
    distributed = pytest.importorskip("distributed")
    urls, _ = remote
    ds = dumpunet.open_dataset(urls["girl"], blocks="IN04", storage_options={"endpoint_url": s3.endpoint})
    local = dumpunet.open_dataset(stores["girl"], blocks="IN04")
    with distributed.LocalCluster(processes=True, n_workers=1, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        means = ds["IN04"].mean(["y", "x"]).compute(scheduler=client)
    assert np.array_equal(means.values, local["IN04"].mean(["y", "x"]).values)
    assert os.environ["AWS_ENDPOINT_URL"] != s3.endpoint

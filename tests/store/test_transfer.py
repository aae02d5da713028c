"""``dumpunet copy`` and the upload of ``record --out URL``, against a real S3 API server on loopback (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from synthetic_stores import RECORDED_STEPS, block_table, features, make_store

import dumpunet
from dumpunet.cli import main
from dumpunet.store.location import COPY_MARKER, list_sizes, open_zarr_store
from dumpunet.store.schema import RunAttrs
from dumpunet.store.transfer import Uploader, key_rank
from dumpunet.store.validate import validate
from dumpunet.store.writer import StoreWriter


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("copy") / "girl.zarr")


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def test_safe_write_order_puts_claims_after_what_they_claim():
    keys = ["zarr.json", "runs/zarr.json", "runs/main/zarr.json", "runs/main/call_done/c.0", "runs/main/call_done/zarr.json",
            "runs/main/call_step/c.0", "runs/main/blocks/IN00/output/zarr.json", "runs/main/blocks/IN00/output/c.0.0.0.0.0.0"]
    ranked = sorted(keys, key=key_rank)
    assert ranked[0] == "runs/main/blocks/IN00/output/c.0.0.0.0.0.0" and ranked[-2:] == ["runs/main/call_done/c.0", "zarr.json"]
    assert ranked.index("runs/main/call_done/zarr.json") < ranked.index("runs/main/call_step/c.0") < ranked.index("runs/main/zarr.json")


def test_copy_round_trip_local_s3_local_is_identical(s3, local, tmp_path):
    url = f"s3://{s3.bucket}/girl.zarr"
    code, text = cli("copy", str(local), url, "--quiet", "--json")
    n = len(files_of(local))
    assert code == 0, text
    assert json.loads(text) == {"src": str(local), "dst": url, "keys": n, "copied": n, "skipped": 0,
                                "bytes_copied": sum(map(len, files_of(local).values())), "arrays": json.loads(text)["arrays"]}
    assert json.loads(text)["arrays"] > 0  # --quiet: nothing but the JSON (no bar, no summary line)
    puts = [r for r in s3.log() if r.method == "PUT"]
    assert len(puts) == n + 1  # every file, and the copy marker
    assert puts[-1].path.endswith("/girl.zarr/zarr.json")  # the root document last: only now is it a store
    assert COPY_MARKER not in list_sizes(open_zarr_store(url), url)
    back = tmp_path / "back.zarr"
    code, text = cli("copy", url, str(back), "--quiet")
    assert code == 0, text
    assert files_of(back) == files_of(local)
    code, text = cli("copy", str(local), url)
    assert code == 1 and "already holds a store" in text


def test_an_interrupted_copy_is_no_store_and_resumes(s3, local, monkeypatch):
    url = f"s3://{s3.bucket}/girl.zarr"
    store_class = type(open_zarr_store(url, mode="w"))  # the default backend's (ObjectStore)
    original, calls = store_class.set, []

    async def flaky(self, key, value):
        calls.append(key)
        if len(calls) > 40:  # the network goes down mid-copy
            raise ConnectionResetError("Connection reset by peer")
        return await original(self, key, value)

    monkeypatch.setattr(store_class, "set", flaky)
    code, text = cli("copy", str(local), url, "--quiet")
    assert code == 1 and text.count("\n") == 1 and "cannot reach the server (Connection reset by peer)" in text, text
    monkeypatch.setattr(store_class, "set", original)
    code, text = cli("info", url)
    assert code == 1 and "unfinished 'dumpunet copy'" in text, text
    copied = {r.path for r in s3.log() if r.method == "PUT"}
    assert 0 < len(copied) <= 41  # the marker and what went up before the failure; nothing after it
    want = {k: len(v) for k, v in files_of(local).items()}
    present = {k for k, n in list_sizes(open_zarr_store(url), url).items() if want.get(k) == n}
    assert present and "zarr.json" not in present
    s3.clear()
    code, text = cli("copy", str(local), url)
    assert code == 0, text
    prefix = f"/{s3.bucket}/girl.zarr/"
    again = {r.path[len(prefix):] for r in s3.log() if r.method == "PUT"}
    assert again.isdisjoint(present)  # what was there with its size is skipped (a cut-off upload is not)
    assert again | present == set(want)
    assert "already there" in text
    assert (dumpunet.open(url).features("OUT11", 20) == dumpunet.open(local).features("OUT11", 20)).all()


def test_copy_refuses_a_target_that_is_not_its_own_unfinished_copy(s3, local, tmp_path):
    other = make_store(tmp_path / "other.zarr", seed=5)
    url = f"s3://{s3.bucket}/x.zarr"
    sizes = open_zarr_store(url, mode="w")
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    sync(sizes.set(COPY_MARKER, default_buffer_prototype().buffer.from_bytes(b'{"source": "/somewhere/else.zarr"}')))
    code, text = cli("copy", str(other), url)
    assert code == 1 and "unfinished copy of /somewhere/else.zarr" in text, text
    code, text = cli("copy", str(other), str(other))
    assert code == 1 and "both the source and the target" in text
    code, text = cli("copy", str(tmp_path / "missing.zarr"), url)
    assert code == 1 and "no store at" in text


def _writer_with_calls(path: Path, steps: list[int]) -> StoreWriter:
    blocks = block_table()
    w = StoreWriter(path, model={"name": "tiny-test"}, versions={})
    w.set_block_table(blocks)
    w.begin_run("main", RunAttrs(prompt="a girl", n_images=1, guidance=("uncond", "cond"), steps=20), blocks,
                which=("output",), dtype="float16")
    for s in steps:
        w.submit_call("main", step=s, substep=0, timestep=1000.0 - 50 * s,
                      slabs={(b.name, "output"): features(b.name, s, 1) for b in blocks})
    w.flush()
    return w


def test_upload_rounds_keep_every_completed_step_readable(s3, tmp_path):
    url = f"s3://{s3.bucket}/live.zarr"
    scratch = tmp_path / "live.zarr"
    up = Uploader(scratch, dumpunet.store.location.locate(url))
    assert up.upload_round() == 0  # nothing recorded yet: nothing sent
    w = _writer_with_calls(scratch, list(RECORDED_STEPS[:2]))
    up.upload_round()
    remote = dumpunet.open(url)
    assert remote.steps == [1, 5] and not remote.run().complete
    assert (remote.features("IN04", 5) == features("IN04", 5, 1)[1, 0]).all()
    # a call whose chunks were written but whose call_done was not: the remote store does not claim it
    w.submit_call("main", step=10, substep=0, timestep=500.0,
                  slabs={(b.name, "output"): features(b.name, 10, 1) for b in block_table()})
    w.flush()
    done = scratch / "runs/main/call_done/c.0"
    done_bytes = done.read_bytes()
    done.write_bytes(done_bytes[:2] + b"\0" + done_bytes[3:])  # as if the writer had not set it yet
    s3.clear()
    up.upload_round()
    assert dumpunet.open(url).steps == [1, 5]
    sent = {r.path.rsplit("girl", 1)[-1] for r in s3.log() if r.method == "PUT"}
    assert any("/c.2." in p for p in sent)  # the chunks of call 2 went up (before any claim of them)
    done.write_bytes(done_bytes)
    w.finish_run("main", images=np.zeros((1, 8, 8, 3), np.uint8), latents=np.zeros((1, 4, 1, 1), np.float32))
    w.close()
    up.close()
    remote = dumpunet.open(url)
    assert remote.steps == [1, 5, 10] and remote.run().complete
    assert list_sizes(open_zarr_store(url), url) == list_sizes(open_zarr_store(scratch), scratch)
    s3.clear()
    assert up.upload_round() == 0 and s3.log() == []  # nothing changed: nothing sent


@pytest.mark.recorder
def test_record_to_a_url_refuses_a_non_empty_target(s3, local, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    url = f"s3://{s3.bucket}/girl.zarr"
    cli("copy", str(local), url, "--quiet")
    code, text = cli("record", "--model", "tiny-sd1", "--sampling-steps", "1", "--out", url, "--dry-run")
    assert code == 1 and "already holds a store" in text, text
    code, text = cli("record", "--model", "tiny-sd1", "--sampling-steps", "1", "--out", url, "--dry-run", "--overwrite")
    assert "already holds" not in text and dumpunet.open(url).steps == [1, 5, 10, 20]  # a dry run deletes nothing


@pytest.mark.recorder
def test_record_to_s3_leaves_the_store_there(s3, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    url = f"s3://{s3.bucket}/girl.zarr"
    args = ["record", "--model", "tiny-sd1", "--prompt", "a girl", "--sampling-steps", "2", "--width", "64", "--height", "64",
            "--seed", "1", "--blocks", "IN01,OUT11", "--attention", "none"]
    monkeypatch.setenv("DUMPUNET_UPLOAD_INTERVAL", "0.2")
    code, text = cli(*args, "--out", url)
    assert code == 0 and f"into {url}" in text, text
    code, text = cli(*args, "--out", str(tmp_path / "girl.zarr"))
    assert code == 0, text
    remote, local = dumpunet.open(url), dumpunet.open(tmp_path / "girl.zarr")
    assert remote.steps == local.steps == [1, 2] and remote.run().complete
    assert (remote.image() == local.image()).all()
    assert (remote.features("OUT11", 2) == local.features("OUT11", 2)).all()
    assert not [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("dumpunet-upload-*") if (p / "girl.zarr").exists()]


@pytest.mark.recorder
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_record_to_s3_leaves_every_completed_step_readable(s3, tmp_path, monkeypatch, error):
    """Ctrl-C (or an error) during the 4th U-Net call: the last upload round still sends steps 1-3, and nothing claims more."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    url = f"s3://{s3.bucket}/cut.zarr"
    submit = StoreWriter.submit_call
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise error("stopped")
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "submit_call", failing)
    monkeypatch.setenv("DUMPUNET_UPLOAD_INTERVAL", "0.2")
    res = CliRunner().invoke(main, ["record", "--model", "tiny-sd1", "--prompt", "a girl", "--sampling-steps", "6",
                                    "--width", "64", "--height", "64", "--seed", "1", "--blocks", "IN01,OUT11",
                                    "--attention", "none", "--quiet", "--out", url])
    assert res.exit_code != 0
    if error is KeyboardInterrupt:
        assert res.output == f"Error: interrupted; complete steps (1-3) stay readable in {url}\n"
    remote = dumpunet.open(url)
    assert remote.steps == [1, 2, 3] and not remote.run().complete
    assert all(remote.features(b, s).shape[0] > 0 for b in ("IN01", "OUT11") for s in (1, 2, 3))
    assert validate(url).ok
    assert not [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("dumpunet-upload-*") if (p / "cut.zarr").exists()]

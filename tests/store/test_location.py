"""Stores at URLs: the one opener, every read path against a real S3 API server on loopback (moto), errors."""

from __future__ import annotations

import functools
import http.server
import json
import socket
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from synthetic_stores import make_store

import dumpunet
from dumpunet.cli import main
from dumpunet.errors import OptionError, StoreError, StoreNotFoundError
from dumpunet.store import location
from dumpunet.store.location import StoreUrl, locate, parse_storage_options

BLOCKS = "IN04,OUT11"


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """A synthetic store (25 blocks, steps 1,5,10,20, inputs too), read-only."""
    return make_store(tmp_path_factory.mktemp("remote") / "girl.zarr", inputs=True)


def upload(s3, local: Path, name: str = "girl.zarr") -> str:
    """Put the store's files into the test bucket with s3fs (not dumpunet's copy); return its URL."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint, skip_instance_cache=True)
    fs.put(str(local), f"{s3.bucket}/{name}", recursive=True)
    return f"s3://{s3.bucket}/{name}"


def cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def test_locate_tells_urls_from_paths():
    assert locate("girl.zarr") == Path("girl.zarr")
    url = locate("S3://bucket/girl.zarr/")
    assert isinstance(url, StoreUrl) and str(url) == "s3://bucket/girl.zarr" and url.name == "girl.zarr"
    assert locate("https://host/x/girl.zarr").read_only and not url.read_only
    with pytest.raises(StoreError, match=r"unknown URL scheme 'ftp'"):
        locate("ftp://host/girl.zarr")
    with pytest.raises(StoreError, match="names no bucket"):
        locate("s3://")
    with pytest.raises(OptionError, match="not for the local path"):
        locate("girl.zarr", {"anon": True})
    assert parse_storage_options(["a=1", "b=x=y", "c=true"]) == {"a": 1, "b": "x=y", "c": True}
    with pytest.raises(OptionError, match="expected KEY=VALUE"):
        parse_storage_options(["novalue"])


def test_fsspec_storage_options_are_translated_for_obstore_in_one_place():
    from dumpunet.store.location import backend_of, obstore_options

    url = locate("s3://b/girl.zarr", {"endpoint_url": "https://minio:9000", "key": "K", "secret": "S", "token": "T",
                                      "client_kwargs": {"region_name": "eu-west-1"}, "virtual_hosted_style_request": False})
    assert obstore_options(url, {}) == {"endpoint": "https://minio:9000", "access_key_id": "K", "secret_access_key": "S",
                                        "session_token": "T", "region": "eu-west-1", "virtual_hosted_style_request": False}
    plain = locate("s3://b/girl.zarr")
    assert obstore_options(plain, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}) == {"client_options": {"allow_http": True}}
    assert obstore_options(plain, {"AWS_ENDPOINT_URL": "https://s3.example"}) == {}
    assert obstore_options(locate("s3://b/g.zarr", {"anon": True}), {}) == {"skip_signature": True}
    assert obstore_options(locate("gs://b/g.zarr", {"token": "anon"}), {}) == {"skip_signature": True}
    assert obstore_options(locate("gs://b/g.zarr", {"token": "/k.json"}), {}) == {"application_credentials": "/k.json"}
    assert [backend_of(locate(u)) for u in ("s3://b/g", "gcs://b/g", "https://h/g", "memory://g")] == \
        ["obstore", "obstore", "fsspec", "fsspec"]
    assert backend_of(locate("s3://b/g"), "fsspec") == "fsspec"


def test_info_validate_and_render_from_s3_equal_the_local_ones(s3, local, tmp_path):
    url = upload(s3, local)
    code, remote_info = cli("info", url, "--json")
    assert code == 0, remote_info
    _, local_info = cli("info", str(local), "--json")
    remote_doc, local_doc = json.loads(remote_info), json.loads(local_info)
    assert remote_doc.pop("path") == url and local_doc.pop("path") == str(local)
    assert remote_doc == local_doc  # disk_bytes too: the bucket lists the same files
    assert cli("validate", url) == (0, f"{url}: ok\n")
    for where, out in ((url, tmp_path / "remote"), (str(local), tmp_path / "local")):
        code, text = cli("render", where, "--blocks", BLOCKS, "--steps", "5,20", "--jobs", "1", "--quiet", "--out", str(out))
        assert code == 0, text
    pngs = sorted(p.name for p in (tmp_path / "local").glob("*.png"))
    assert len(pngs) == 4
    assert sorted(p.name for p in (tmp_path / "remote").glob("*.png")) == pngs
    for name in pngs:
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_every_read_command_takes_a_url(s3, local, tmp_path):
    url = upload(s3, local)
    for where, out in ((url, tmp_path / "remote"), (str(local), tmp_path / "local")):
        code, text = cli("export", where, "--blocks", "OUT11", "--steps", "20", "--format", "npy", "--quiet", "--out", str(out))
        assert code == 0, text
    assert [p.name for p in (tmp_path / "remote").glob("*.npy")] == ["OUT11-step020.npy"]
    assert (tmp_path / "remote/OUT11-step020.npy").read_bytes() == (tmp_path / "local/OUT11-step020.npy").read_bytes()
    # the synthetic store holds no pair and no attention: each command opens it and names what it lacks
    for args, lacks in ((["diff", url, "--blocks", "OUT11"], "holds no paired runs"),
                        (["attention", url, "--layers", "OUT11"], "recorded without attention"),
                        (["heatmap", url, "--word", "girl"], "without attention")):
        assert lacks in _one_line_error([*args, "--out", str(tmp_path / args[0])])
    assert not (tmp_path / "diff").exists()
    store = dumpunet.open(url)
    assert store.path == StoreUrl(url) and store.steps == [1, 5, 10, 20]
    assert (store.features("OUT11", 20) == dumpunet.open(local).features("OUT11", 20)).all()


def test_one_block_at_one_step_transfers_exactly_one_chunk(s3, local):
    url = upload(s3, local)
    store = dumpunet.open(url)
    store.features("OUT11", 5)  # the call table and the array's metadata are read once per run
    s3.clear()
    x = store.features("OUT11", 20, guidance="uncond")
    log = s3.log()
    key = "runs/main/blocks/OUT11/output/c.3.0.0.0.0.0"  # call 3 (step 20), image 0, uncond
    assert [(r.method, r.path) for r in log] == [("GET", f"/{s3.bucket}/girl.zarr/{key}")]
    assert log[0].sent == x.nbytes == (local / key).stat().st_size


def test_storage_options_reach_the_backend(s3, local, monkeypatch):
    url = upload(s3, local)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    code, text = cli("info", url, "--storage-option", f"endpoint_url={s3.endpoint}")
    assert code == 0 and f"store     {url}" in text, text
    assert dumpunet.open(url, storage_options={"endpoint_url": s3.endpoint}).steps == [1, 5, 10, 20]
    code, text = cli("info", str(local), "--storage-option", "anon=true")
    assert code == 2 and "--storage-option is for stores given as URLs" in text
    code, text = cli("info", url, "--storage-option", "anon")
    assert code == 2 and "expected KEY=VALUE" in text


def _one_line_error(args: list[str]) -> str:
    code, text = cli(*args)
    assert code == 1 and text.startswith("Error: ") and text.count("\n") == 1 and "Traceback" not in text, text
    return text


def test_missing_store_bucket_and_foreign_urls_are_one_line_errors(s3, tmp_path):
    assert _one_line_error(["info", f"s3://{s3.bucket}/nothing.zarr"]) == \
        f"Error: no store at s3://{s3.bucket}/nothing.zarr (no zarr.json there)\n"
    assert "no store at s3://no-such-bucket-here/girl.zarr" in _one_line_error(["render", "s3://no-such-bucket-here/girl.zarr",
                                                                                "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()  # nothing written
    import s3fs

    s3fs.S3FileSystem(endpoint_url=s3.endpoint, skip_instance_cache=True).pipe(
        f"{s3.bucket}/foreign.zarr/zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode())
    assert "not a dumpunet store" in _one_line_error(["info", f"s3://{s3.bucket}/foreign.zarr"])
    code, text = cli("info", "ftp://host/girl.zarr")
    assert code == 2 and "unknown URL scheme 'ftp'" in text
    with pytest.raises(StoreNotFoundError):
        dumpunet.open(f"s3://{s3.bucket}/nothing.zarr")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("backend", "fail_fast"), [
    ("obstore", []),  # the default; it gives up on a refused connection within seconds
    ("fsspec", ["--storage-option", 'config_kwargs={"retries": {"max_attempts": 1}}']),  # botocore's name
])
def test_an_unreachable_server_is_one_line_error(s3, monkeypatch, backend, fail_fast):
    monkeypatch.setattr(location, "BACKEND", backend)
    text = _one_line_error(["info", "s3://bucket/girl.zarr", "--storage-option", f"endpoint_url=http://127.0.0.1:{_free_port()}",
                            *fail_fast])
    assert "cannot reach the server" in text


class _Forbidden(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that refuses every request as S3 does for a wrong key."""

    authorizations: ClassVar[list[str]] = []

    def _deny(self) -> None:
        self.authorizations.append(self.headers.get("Authorization", ""))
        body = (b'<?xml version="1.0"?><Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you '
                b"provided does not exist in our records.</Message></Error>")
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _deny

    def log_message(self, *args: object) -> None:
        pass


def test_wrong_credentials_are_one_line_error(s3):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        text = _one_line_error(["info", "s3://bucket/girl.zarr", "--storage-option",
                                f"endpoint_url=http://127.0.0.1:{server.server_address[1]}"])
    finally:
        server.shutdown()
    assert "access denied" in text and "check the credentials" in text


def test_keys_of_an_aws_profile_reach_obstore(s3, tmp_path, monkeypatch):
    (tmp_path / "credentials").write_text("[lab]\naws_access_key_id = PROFILEKEY\naws_secret_access_key = secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "lab")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Forbidden.authorizations.clear()
    try:
        _one_line_error(["info", "s3://bucket/girl.zarr", "--storage-option", f"endpoint_url=http://127.0.0.1:{server.server_address[1]}"])
    finally:
        server.shutdown()
    assert _Forbidden.authorizations and all("Credential=PROFILEKEY/" in a for a in _Forbidden.authorizations)
    monkeypatch.setenv("AWS_PROFILE", "nosuchprofile")
    assert "nosuchprofile" in _one_line_error(["info", "s3://bucket/girl.zarr"])


def test_https_stores_are_read_only_urls(local, tmp_path):
    pytest.importorskip("aiohttp")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(local.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{local.name}"
    try:
        store = dumpunet.open(url)
        assert (store.features("IN04", 10) == dumpunet.open(local).features("IN04", 10)).all()
        code, text = cli("copy", str(local), url + "-copy")
        assert code == 1 and "read-only" in text, text
    finally:
        server.shutdown()


def test_the_worked_example_of_docs_remote_runs(s3, local, tmp_path, monkeypatch):
    import shlex
    import shutil

    doc = (Path(__file__).resolve().parents[2] / "docs" / "remote.md").read_text()
    block = doc.split("## Worked example", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    shutil.copytree(local, tmp_path / "girl.zarr")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the doc's --storage-option must be what reaches the server
    for line in block.strip().splitlines():
        args = [a.replace("http://127.0.0.1:9000", s3.endpoint).replace("s3://lab/", f"s3://{s3.bucket}/")
                for a in shlex.split(line)]
        assert args[0] == "dumpunet"
        code, text = cli(*args[1:])
        assert code == 0, (line, text)
    assert files_equal(tmp_path / "back.zarr", local)
    assert len(list((tmp_path / "renders").glob("*.png"))) == len(list((tmp_path / "renders").glob("OUT11-step020-*.png"))) == 1


def files_equal(a: Path, b: Path) -> bool:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    return files(a) == files(b)


def test_view_serves_and_exports_a_url(s3, local, tmp_path):
    from dumpunet.viewer.server import ViewerServer

    url = upload(s3, local)
    server = ViewerServer([url, str(local)])
    try:
        assert server.paths == [StoreUrl(url), local] and server.stores[0].steps == server.stores[1].steps
    finally:
        server.server_close()
    for where, out in ((url, tmp_path / "remote"), (str(local), tmp_path / "local")):
        code, text = cli("view", where, "--export", str(out), "--blocks", "OUT11", "--steps", "20", "--quiet")
        assert code == 0, text
    pngs = sorted(p.name for p in (tmp_path / "local").glob("*.png"))
    assert pngs and sorted(p.name for p in (tmp_path / "remote").glob("*.png")) == pngs
    assert all((tmp_path / "remote" / n).read_bytes() == (tmp_path / "local" / n).read_bytes() for n in pngs)

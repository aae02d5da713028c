"""Fixtures of the store tests: a real S3 API server on loopback (moto, see s3server.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 on 127.0.0.1 at a free port, for the whole session (skipped without the test extra)."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from s3server import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server with an empty bucket of its own (``s3.bucket``); only dummy credentials and its endpoint in the environment."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    from s3server import ENV

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)  # so no client falls back to amazonaws.com
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    s3_server.bucket = s3_server.new_bucket()
    s3_server.clear()
    return s3_server

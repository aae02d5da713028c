"""Stores and a running viewer server for the viewer tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "analyzer"))  # synthetic_stores

from viewer_stores import make_attention_store  # noqa: E402
from synthetic_stores import make_paired_store  # noqa: E402

from dumpunet.viewer.server import start  # noqa: E402


@pytest.fixture(scope="session")
def stores(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("viewer")
    return [make_attention_store(root / "girl.zarr"), make_paired_store(root / "pair.zarr")]


@pytest.fixture(scope="session")
def server(stores):
    srv = start(stores)
    yield srv
    srv.stop()

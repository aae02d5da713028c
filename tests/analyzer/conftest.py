"""Session-wide synthetic stores for the analyzer tests (see synthetic_stores.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_stores import make_store


@pytest.fixture(scope="session")
def girl(tmp_path_factory) -> Path:
    """A read-only store: 25 blocks, steps 1,5,10,20 of 20, one image, inputs recorded."""
    return make_store(tmp_path_factory.mktemp("stores") / "girl.zarr", inputs=True)


@pytest.fixture(scope="session")
def pair(tmp_path_factory) -> Path:
    """A read-only store with two images (for image and guidance selections)."""
    return make_store(tmp_path_factory.mktemp("stores") / "pair.zarr", n_images=2, seed=3)

"""Shared test setup: tests import helpers from sibling test modules, and nothing reaches the network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
for folder in (HERE, HERE / "store", HERE / "analyzer", HERE / "viewer"):  # helpers: test_store.write_store,
    sys.path.insert(0, str(folder))  # synthetic_stores, viewer_stores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

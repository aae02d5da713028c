"""Keep every recorder test off the network and out of the user's Hugging Face cache."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(autouse=True)
def offline_hub(tmp_path_factory, monkeypatch):
    """Set HF_HUB_OFFLINE and point the Hugging Face cache at an empty folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if importlib.util.find_spec("huggingface_hub") is None:
        return None
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hf-cache")
    # huggingface_hub reads these module constants at call time; the env vars only at import.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache

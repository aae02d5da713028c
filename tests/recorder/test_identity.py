"""Model identity: the U-Net fingerprint follows the weights, cheaply."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dumpunet.recorder.identity import software_versions, unet_fingerprint  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.recorder


def test_fingerprint_is_stable_and_changes_with_any_sampled_weight():
    a, b = build_tiny_pipeline("tiny-sd1").unet, build_tiny_pipeline("tiny-sd1").unet
    fp = unet_fingerprint(a)
    assert fp == unet_fingerprint(b) and len(fp) == 64
    assert fp != unet_fingerprint(build_tiny_pipeline("tiny-sdxl").unet)
    big = max(a.parameters(), key=lambda p: p.numel())  # a tensor sampled in three windows
    n = big.numel()
    for index in (0, n // 2, n - 1):
        with torch.no_grad():
            big.view(-1)[index] += 1.0  # in place: the cached value must not be reused
        changed = unet_fingerprint(a)
        assert changed != fp
        fp = changed


def test_versions_name_the_stack():
    v = software_versions()
    assert {"python", "dumpunet", "torch", "diffusers", "zarr", "numpy"} <= set(v)

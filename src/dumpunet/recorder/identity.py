"""Say which model and which software produced a store."""

from __future__ import annotations

import hashlib
import platform
import weakref
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from typing import Any

import torch
from torch import nn

_WINDOW = 2048  # values hashed from the start, the middle and the end of each tensor


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[int, int], ...], str]] = weakref.WeakKeyDictionary()


def unet_fingerprint(unet: nn.Module) -> str:
    """Return a sha256 over every U-Net parameter's name, shape, dtype and a fixed sample of its values.

    Each tensor contributes its first, middle and last 2048 values (all of it when smaller), so
    an SD1.5 U-Net is fingerprinted in about 10 ms instead of the seconds a full 3.4 GB hash
    takes (recording must not slow the run). Retrained, merged or LoRA-fused weights change it.
    """
    # Cached per module while no parameter has been replaced or changed in place.
    key = tuple((p.data_ptr(), p._version) for p in unet.parameters())
    cached = _CACHE.get(unet)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(unet.state_dict().items()):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            flat = t.detach().reshape(-1)
            n = flat.numel()
            parts = [flat] if n <= 3 * _WINDOW else [flat[:_WINDOW], flat[n // 2 : n // 2 + _WINDOW], flat[-_WINDOW:]]
            for part in parts:
                part = part.cpu().contiguous()
                if part.dtype == torch.bfloat16:
                    part = part.view(torch.int16)
                h.update(part.numpy().tobytes())
    _CACHE[unet] = (key, h.hexdigest())
    return _CACHE[unet][1]


@lru_cache(maxsize=1)
def software_versions() -> dict[str, str]:
    """Versions of the packages that shape a recording."""
    out = {"python": platform.python_version()}
    for pkg in ("dumpunet", "torch", "diffusers", "transformers", "zarr", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_attrs(pipe: Any, info: Mapping[str, Any]) -> dict[str, Any]:
    """The store's ``model`` attribute: name, pipeline class, ``info`` (the loader's metadata), U-Net fingerprint.

    The API (:func:`dumpunet.record`) and ``dumpunet record`` both write it with this function.
    """
    name = getattr(pipe.unet.config, "_name_or_path", "") or type(pipe).__name__
    return {"name": name, "pipeline": type(pipe).__name__, **info, "unet_fingerprint": unet_fingerprint(pipe.unet)}

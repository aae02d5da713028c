"""Say which model and which software produced a store."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata

import torch
from torch import nn

_SMALL = 1 << 20  # tensors up to 1 MiB are hashed whole
_WINDOWS = 16  # larger ones: this many evenly spaced windows ...
_WINDOW = 4096  # ... of this many elements


def unet_fingerprint(unet: nn.Module) -> str:
    """Return a sha256 over every U-Net parameter's name, shape, dtype and a fixed sample of its values.

    Small tensors are hashed whole; large ones through 16 evenly spaced windows of 4096 values, so
    an SD1.5 U-Net is fingerprinted in milliseconds instead of the seconds a full 3.4 GB hash takes
    (recording must not slow the run). Any retrained or merged checkpoint changes it.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(unet.state_dict().items()):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            flat = t.detach().reshape(-1)
            if flat.numel() * flat.element_size() > _SMALL:
                n = flat.numel()
                starts = torch.linspace(0, n - _WINDOW, _WINDOWS, dtype=torch.float64).long()
                idx = (starts[:, None] + torch.arange(_WINDOW)[None, :]).reshape(-1).to(flat.device)
                flat = flat[idx]
            flat = flat.cpu().contiguous()
            if flat.dtype == torch.bfloat16:
                flat = flat.view(torch.int16)
            h.update(flat.numpy().tobytes())
    return h.hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape a recording."""
    out = {"python": platform.python_version()}
    for pkg in ("dumpunet", "torch", "diffusers", "transformers", "zarr", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out

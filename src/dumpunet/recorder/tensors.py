"""Getting at the tensors hooks see, and turning what they carry into stored values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dumpunet.errors import RecordError


def first_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str = "hidden_states") -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    t = kwargs.get(name)
    if isinstance(t, torch.Tensor):
        return t
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            return v
    raise RecordError("a hooked module was called without a tensor input")


def output_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise RecordError(f"cannot find the output tensor of a hooked module ({type(output).__name__})")


def jsonable(value: Any) -> Any:
    """Turn scheduler configs and similar into JSON-safe values."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    return str(value)


def decoded_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Convert VAE decoder output ([-1, 1], NCHW) to uint8 NHWC exactly as diffusers' postprocess does."""
    x = (images / 2 + 0.5).clamp(0, 1)
    x = x.cpu().permute(0, 2, 3, 1).float().numpy()
    return (x * 255).round().astype("uint8")

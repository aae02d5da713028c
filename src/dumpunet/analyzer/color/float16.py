"""How float maps reach the kernels: float32/float64 as they are, float16 as its raw bits.

numba has no float16 on the CPU, and converting whole float16 arrays would cost a pass and
memory. The kernels instead read float16 maps as uint16 and decode each value through
``HALF``, a 65536-entry float32 table (256 KiB, cache-resident), exactly as numpy would.
"""

from __future__ import annotations

import numpy as np

HALF = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
HALF.setflags(write=False)


def check_float(array: np.ndarray, what: str = "maps") -> np.ndarray:
    if array.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{what} must be float16, float32 or float64, got {array.dtype}")
    return array


def kernel_view(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(data, half)`` for a kernel: C-contiguous floats and None, or float16 bits and HALF."""
    array = np.ascontiguousarray(array)
    if array.dtype == np.float16:
        return array.view(np.uint16), HALF
    return array, None

"""The tensor file formats that export, attention export and diff write, stated once.

==================  ===============================================================================
``bin``             the original extension's dump: one 2-D map per file, little-endian float32 in
                    row-major order, no header, named ``{image:03}-{name}-{step:03}-{index:04}-
                    {guidance}.bin`` (:func:`bin_name`; the original put a timestamp where the
                    guidance half is)
``npy``             one array per file, in the dtype given (``np.save``, no pickles)
``safetensors``     named tensors and string metadata (8-byte little-endian header length, the
                    JSON header padded with spaces to a multiple of 8, then the raw little-endian
                    data; see https://github.com/huggingface/safetensors#format), written here
                    directly so the analyzer needs no extra package
==================  ===============================================================================

Examples
--------
>>> bin_name(0, "OUT11", 20, 3, "cond")
'000-OUT11-020-0003-cond.bin'
>>> bin_bytes(np.array([[1.0, -2.0]], np.float16)).hex()
'0000803f000000c0'
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from dumpunet.errors import OptionError

__all__ = ["ARRAY_FORMATS", "FORMATS", "array_file", "bin_bytes", "bin_name", "check_format"]

FORMATS = ("bin", "npy", "safetensors")
ARRAY_FORMATS = ("npy", "safetensors")
_ST_DTYPES = {np.dtype("float16"): "F16", np.dtype("float32"): "F32", np.dtype("float64"): "F64"}


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is one of :data:`FORMATS`, else raise one readable :class:`OptionError`."""
    if fmt not in FORMATS:
        raise OptionError(f"unknown export format {fmt!r} (valid: {', '.join(FORMATS)})")
    return fmt


def bin_name(image: int, name: str, step: int, index: int, guidance: str) -> str:
    """The original's dump file name, the guidance half in place of its timestamp."""
    return f"{image:03d}-{name}-{step:03d}-{index:04d}-{guidance}.bin"


def bin_bytes(x: np.ndarray) -> bytes:
    """One map as the original dumped it: float32, little-endian, row-major, no header."""
    return np.ascontiguousarray(x, dtype="<f4").tobytes()


def array_file(fmt: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> Callable[[IO[bytes]], None]:
    """A writer of ``tensors`` as one ``npy`` (exactly one tensor) or ``safetensors`` file."""
    if fmt == "npy":
        (arr,) = tensors.values()
        return lambda fh: np.save(fh, arr, allow_pickle=False)
    if fmt == "safetensors":
        return lambda fh: write_safetensors(fh, tensors, metadata)
    raise OptionError(f"unknown array format {fmt!r} (valid: {', '.join(ARRAY_FORMATS)})")


def write_safetensors(fh: IO[bytes], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (float16/32/64) and string ``metadata`` in the safetensors format."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, a in tensors.items():
        if a.dtype not in _ST_DTYPES:
            raise ValueError(f"safetensors export supports float16/32/64, got {a.dtype}")
        header[name] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    fh.write(struct.pack("<Q", len(text)))
    fh.write(text)
    for a in tensors.values():
        fh.write(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())

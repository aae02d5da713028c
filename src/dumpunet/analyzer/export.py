"""Export raw feature values of a selection as files other tools read.

==================  ===============================================================================
``bin``             the original extension's dump: one file per channel, ``H*W`` little-endian
                    float32 values in row-major order, no header, named
                    ``{image:03}-{block}-{step:03}-{channel:04}-{guidance}.bin``
                    (``{block}-input`` for block inputs), e.g. ``000-OUT11-020-0000-cond.bin``
``npy``             one file per block and step, ``{block}-step{step:03}.npy``: the array
                    ``[image, guidance, channel, y, x]`` of the selected images, guidance halves
                    and channels, in the stored dtype (float16 unless recorded with fp32)
``safetensors``     the same array as one tensor named ``features`` in
                    ``{block}-step{step:03}.safetensors``; the header's ``__metadata__`` (strings)
                    says ``block``, ``which``, ``step``, ``call``, ``timestep``, ``images``,
                    ``guidance`` (labels, comma-separated, in axis order), ``channels`` (spec),
                    ``dims`` (``image,guidance,channel,y,x``), ``store`` and ``run``
==================  ===============================================================================

Safetensors files are written here directly (8-byte little-endian header length, the JSON header
padded with spaces to a multiple of 8, then the raw little-endian data; see
https://github.com/huggingface/safetensors#format), so the analyzer needs no extra package.
``manifest.json`` lists every file (:mod:`.output`); every file is written atomically.

Examples
--------
>>> dumpunet.export("girl.zarr", Pick(blocks="OUT11", steps="20"), format="bin", out="dump")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import struct
from itertools import groupby
from typing import IO, Any, Literal

import numpy as np

from dumpunet.analyzer.output import OutputFolder, WrittenFile, name_part
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.pool import progress_bar
from dumpunet.analyzer.selection import Selection, Slab, select
from dumpunet.errors import OptionError
from dumpunet.store import Store, open_store

__all__ = ["FORMATS", "export"]

FORMATS = ("bin", "npy", "safetensors")
_ST_DTYPES = {np.dtype("float16"): "F16", np.dtype("float32"): "F32", np.dtype("float64"): "F64"}


def export(
    store: Store | str | os.PathLike[str],
    pick: Pick = Pick(),
    *,
    out: str | os.PathLike[str],
    format: Literal["bin", "npy", "safetensors"] = "bin",  # noqa: A002 - the CLI's --format
    progress: bool = True,
) -> list[WrittenFile]:
    """Write what ``pick`` selects of a store to ``out`` as ``format`` files; return them.

    ``pick`` is :func:`dumpunet.render`'s (empty specs select everything).

    Examples
    --------
    >>> files = dumpunet.export("girl.zarr", Pick(blocks="OUT11", steps="20"), format="npy", out="dump")  # doctest: +SKIP
    >>> np.load(files[0]).shape  # doctest: +SKIP
    (1, 1, 320, 64, 64)
    """
    if format not in FORMATS:
        raise OptionError(f"unknown export format {format!r} (valid: {', '.join(FORMATS)})")
    sel = select(store if isinstance(store, Store) else open_store(store), pick)
    output = OutputFolder(out)
    done: list[WrittenFile] = []
    with progress_bar(len(sel.steps) * len(sel.blocks), progress, unit="map", desc="export") as bar, output:
        for _, group in groupby(sel.slabs(), key=lambda s: (s.step, s.block)):
            slabs = list(group)
            if format == "bin":
                for slab in slabs:
                    done += _write_bin(sel, slab, output)
            else:
                done.append(_write_array(sel, slabs, output, format))
            bar.update(1)
    return done


def _base(sel: Selection) -> dict[str, Any]:
    return {"kind": "export", "store": str(sel.store.path.resolve()), "run": sel.run.name}


def _write_bin(sel: Selection, slab: Slab, output: OutputFolder) -> list[WrittenFile]:
    x = sel.read(slab)
    channels = sel.channels[slab.block] or range(x.shape[0])
    block = name_part(slab.block, "block") + ("-input" if slab.which == "input" else "")
    written = []
    for row, c in enumerate(channels):
        name = f"{slab.image:03d}-{block}-{slab.step:03d}-{c:04d}-{slab.guidance}.bin"
        entry = {**_base(sel), **slab.params(), "channel": c, "format": "bin", "dtype": "<f4", "shape": list(x.shape[1:])}
        written.append(output.write(name, x[row].astype("<f4").tobytes(), entry))
    return written


def _write_array(sel: Selection, slabs: list[Slab], output: OutputFolder, fmt: str) -> WrittenFile:
    first = slabs[0]
    n_img, n_g = len(sel.images), len(sel.guidance)
    c, h, w = sel.shape(first.block)
    arr = np.empty((n_img, n_g, c, h, w), sel.arrays[first.block].dtype)
    for slab in slabs:
        arr[sel.images.index(slab.image), [g for _, g in sel.guidance].index(slab.guidance_index)] = sel.read(slab)
    block = name_part(first.block, "block") + ("-input" if first.which == "input" else "")
    name = f"{block}-step{first.step:03d}.{fmt}"
    meta = {
        "block": first.block,
        "which": first.which,
        "step": first.step,
        "call": first.call,
        "timestep": first.timestep,
        "images": ",".join(str(i) for i in sel.images),
        "guidance": ",".join(label for label, _ in sel.guidance),
        "channels": sel.channel_text(first.block),
        "dims": "image,guidance,channel,y,x",
        "store": str(sel.store.path.resolve()),
        "run": sel.run.name,
    }
    entry = {"kind": "export", **meta, "images": sel.images, "guidance": [label for label, _ in sel.guidance],
             "format": fmt, "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if fmt == "npy":
        return output.write(name, lambda fh: np.save(fh, arr, allow_pickle=False), entry)
    header = {k: str(v) for k, v in meta.items()}
    return output.write(name, lambda fh: _write_safetensors(fh, {"features": arr}, header), entry)


def _write_safetensors(fh: IO[bytes], tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
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

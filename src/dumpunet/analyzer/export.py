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
>>> dumpunet.export("girl.zarr", blocks="OUT11", steps="20", format="bin", out="dump")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import struct
import sys
from itertools import groupby
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from dumpunet.analyzer.output import Manifest, WrittenFile, check_folder, prepare_folder, write_atomic
from dumpunet.analyzer.selection import Selection, Slab, select
from dumpunet.errors import DumpUnetError
from dumpunet.store import Store, open_store

__all__ = ["FORMATS", "export"]

FORMATS = ("bin", "npy", "safetensors")
_ST_DTYPES = {np.dtype("float16"): "F16", np.dtype("float32"): "F32", np.dtype("float64"): "F64"}


def export(
    store: Store | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    blocks: str = "",
    steps: str = "",
    images: str = "",
    guidance: Literal["cond", "uncond", "both"] = "cond",
    channels: str = "",
    which: Literal["output", "input"] = "output",
    run: str | None = None,
    format: Literal["bin", "npy", "safetensors"] = "bin",  # noqa: A002 - the CLI's --format
    progress: bool = True,
) -> list[WrittenFile]:
    """Write the selected feature values of a store to ``out`` as ``format`` files; return them.

    Selection arguments are those of :func:`dumpunet.render` (empty specs select everything).

    Examples
    --------
    >>> files = dumpunet.export("girl.zarr", blocks="OUT11", steps="20", format="npy", out="dump")  # doctest: +SKIP
    >>> np.load(files[0]).shape  # doctest: +SKIP
    (1, 1, 320, 64, 64)
    """
    if format not in FORMATS:
        raise DumpUnetError(f"unknown export format {format!r} (valid: {', '.join(FORMATS)})")
    st = store if isinstance(store, Store) else open_store(store)
    sel = select(st, blocks=blocks, steps=steps, images=images, guidance=guidance, channels=channels,
                 which=which, run=run)
    manifest = Manifest(check_folder(out))
    folder = prepare_folder(out)
    from tqdm.auto import tqdm

    done: list[WrittenFile] = []
    total = len(sel.steps) * len(sel.blocks)
    bar = tqdm(total=total, disable=not progress, file=sys.stderr, unit="map", desc="export", dynamic_ncols=True)
    try:
        for _, group in groupby(sel.slabs(), key=lambda s: (s.step, s.block)):
            slabs = list(group)
            if format == "bin":
                for slab in slabs:
                    _write_bin(sel, slab, folder, done)
            else:
                _write_array(sel, slabs, folder, format, done)
            bar.update(1)
    finally:
        bar.close()
        manifest.extend(f.params for f in done)
        manifest.write()
    return done


def _base(sel: Selection) -> dict[str, Any]:
    return {"kind": "export", "store": str(sel.store.path.resolve()), "run": sel.run.name}


def _write_bin(sel: Selection, slab: Slab, folder: Path, done: list[WrittenFile]) -> None:
    x = sel.read(slab)
    channels = sel.channels[slab.block] or range(x.shape[0])
    block = f"{slab.block}-input" if slab.which == "input" else slab.block
    for row, c in enumerate(channels):
        name = f"{slab.image:03d}-{block}-{slab.step:03d}-{c:04d}-{slab.guidance}.bin"
        path = folder / name
        write_atomic(path, x[row].astype("<f4").tobytes())
        entry = {"file": name, **_base(sel), **slab.params(), "channel": c, "format": "bin",
                 "dtype": "<f4", "shape": list(x.shape[1:])}
        done.append(WrittenFile(path, entry))


def _write_array(sel: Selection, slabs: list[Slab], folder: Path, fmt: str, done: list[WrittenFile]) -> None:
    first = slabs[0]
    n_img, n_g = len(sel.images), len(sel.guidance)
    c, h, w = sel.shape(first.block)
    arr = np.empty((n_img, n_g, c, h, w), sel.arrays[first.block].dtype)
    for slab in slabs:
        arr[sel.images.index(slab.image), [g for _, g in sel.guidance].index(slab.guidance_index)] = sel.read(slab)
    block = f"{first.block}-input" if first.which == "input" else first.block
    name = f"{block}-step{first.step:03d}.{fmt}"
    path = folder / name
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
    if fmt == "npy":
        write_atomic(path, lambda fh: np.save(fh, arr, allow_pickle=False))
    else:
        write_atomic(path, lambda fh: _write_safetensors(fh, {"features": arr}, {k: str(v) for k, v in meta.items()}))
    entry = {"file": name, "kind": "export", **meta, "images": sel.images, "guidance": [label for label, _ in sel.guidance],
             "format": fmt, "dtype": arr.dtype.str, "shape": list(arr.shape)}
    done.append(WrittenFile(path, entry))


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

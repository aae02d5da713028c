"""Export recorded attention as tensor files: the original's Q*K dump, and npy / safetensors.

==================  ===============================================================================
``bin``             the original extension's attention dump: one file per head x token, the map of
                    how much every (stored) query pixel attends to that token, ``qh*qw``
                    little-endian float32 values in row-major order, no header, named
                    ``{image:03}-{layer}-{step:03}-{head*T+token:04}-{guidance}.bin`` (``T`` the
                    number of tokens, 77 per prompt chunk), e.g. ``000-IN01.attn2-005-0079-cond.bin``
                    is head 1, token 2. ``feature="vqk"``: one file per output channel
                    ``head*D+dim`` (the original's channel order); ``feature="k"``: one
                    ``[token, dim]`` file per head
``npy``             one file per layer and step, ``{layer}-step{step:03}-{feature}.npy``: the array
                    ``[image, guidance, *stored]`` in the stored dtype (qk: ``head, query, token``;
                    k: ``head, token, head_dim``; vqk: ``head, query, head_dim``)
``safetensors``     the same array as one tensor named after the feature, with ``__metadata__``
                    ``layer``, ``feature``, ``step``, ``call``, ``timestep``, ``images``,
                    ``guidance``, ``dims``, ``layer_hw``, ``query_hw``, ``store`` and ``run``
==================  ===============================================================================

The original named the file after the block (``IN01``): it hooked one cross-attention layer per
SD1 block. Here the layer's own name takes that place, so self-attention (``IN01.attn1``) and
SDXL's several transformer blocks per block (``IN04.attn2.1``) do not collide. Self-attention
maps cover the query pixels that were recorded (``--query-region``, ``--query-stride``):
``qh x qw`` is their grid.

Examples
--------
>>> dumpunet.export_attention("girl.zarr", Pick(blocks="IN01.attn2", steps="5"), out="dump")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np

from dumpunet.analyzer.output import OutputFolder, WrittenFile
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.pool import check_jobs, progress_bar, run_parallel
from dumpunet.analyzer.selection import AttentionSelection, select_attention
from dumpunet.analyzer.tensor_files import array_file, bin_bytes, bin_name, check_format
from dumpunet.errors import OptionError
from dumpunet.store import Store, open_store, schema

__all__ = ["FEATURES", "bin_maps", "export_attention"]

FEATURES = tuple(schema.ATTENTION_FEATURES)


def export_attention(
    store: Store | str | os.PathLike[str],
    pick: Pick = Pick(),
    *,
    out: str | os.PathLike[str],
    format: Literal["bin", "npy", "safetensors"] = "bin",  # noqa: A002 - the CLI's --format
    feature: Literal["qk", "k", "vqk"] = "qk",
    progress: bool = True,
    jobs: int | None = None,
) -> list[WrittenFile]:
    """Write the attention layers ``pick.blocks`` names as ``format`` files to ``out``; return them.

    ``pick.blocks`` names layers (``IN01.attn2``) or blocks (all their recorded layers);
    ``channels`` and ``which`` do not apply. ``jobs``: threads each reading and writing one
    (step, layer) at a time (default: every CPU); the files do not depend on the count.

    Examples
    --------
    >>> files = dumpunet.export_attention("girl.zarr", Pick(blocks="IN01.attn2", steps="5"),
    ...                                   format="npy", out="dump")  # doctest: +SKIP
    >>> np.load(files[0]).shape  # doctest: +SKIP
    (1, 1, 8, 4096, 77)
    """
    check_format(format)
    jobs = check_jobs(jobs)
    if feature not in FEATURES:
        raise OptionError(f"unknown attention feature {feature!r} (valid: {', '.join(FEATURES)})")
    st = store if isinstance(store, Store) else open_store(store)
    sel = select_attention(st, pick, "export of attention layers")
    for layer in sel.layers:  # every layer must hold the feature before anything is written
        sel.run.attention_array(layer, feature)
    output = OutputFolder(out)
    items = [(step, layer) for step in sel.steps for layer in sel.layers]
    batches: list[list[WrittenFile]] = []
    with progress_bar(len(items), progress, unit="layer", desc="export") as bar, output:
        run_parallel(items, lambda item: _write_layer(sel, st, item[1], item[0], feature, format, output),
                     jobs=jobs, done=batches, on_done=lambda _: bar.update(1))
    return [f for batch in batches for f in batch]


def bin_maps(data: np.ndarray, feature: str, query_hw: tuple[int, int]) -> np.ndarray:
    """The 2-D maps of one stored slab that the bin dump writes, file ``i`` holding ``maps[i]``.

    qk ``[head, query, token]`` -> ``[head*T + token, qh, qw]``; vqk ``[head, query, dim]`` ->
    ``[head*D + dim, qh, qw]``; k ``[head, token, dim]`` as it is.

    >>> bin_maps(np.arange(12.0).reshape(1, 4, 3), "qk", (2, 2))[2]
    array([[ 2.,  5.],
           [ 8., 11.]])
    """
    if feature == "k":
        return data
    heads, _, n = data.shape
    return data.transpose(0, 2, 1).reshape(heads * n, *query_hw)


def _write_layer(sel: AttentionSelection, st: Store, layer: str, step: int, feature: str, fmt: str,
                 output: OutputFolder) -> list[WrittenFile]:
    r = sel.run
    info = r.layer_info(layer, feature)
    rows, cols = info.queries
    query_hw = (len(rows), len(cols))
    call = r.calls.index(step, 0)
    shared: dict[str, Any] = {
        "kind": "attention-export", "store": str(st.path.resolve()), "run": r.name, "layer": layer,
        "feature": feature, "step": step, "call": call, "timestep": float(r.calls.timestep[call]),
    }
    slabs = {(image, g): r.attention(layer, step, feature=feature, guidance=g, image=image)
             for image in sel.images for g in sel.halves}
    if fmt == "bin":
        written = []
        for (image, g), data in slabs.items():
            maps = bin_maps(data, feature, query_hw)
            for i, m in enumerate(maps):
                entry = {**shared, "image": image, "guidance": g, "index": i, "format": "bin", "dtype": "<f4",
                         "shape": list(m.shape)}
                written.append(output.write(bin_name(image, layer, step, i, g), bin_bytes(m), entry))
        return written
    sample = next(iter(slabs.values()))
    arr = np.empty((len(sel.images), len(sel.halves), *sample.shape), sample.dtype)
    for (image, g), data in slabs.items():
        arr[sel.images.index(image), sel.halves.index(g)] = data
    dims = ",".join(schema.ATTENTION_FEATURES[feature].dims[1:])
    meta = {**shared, "images": ",".join(map(str, sel.images)), "guidance": ",".join(sel.halves), "dims": dims,
            "layer_hw": "x".join(map(str, info.layer_hw)), "query_hw": "x".join(map(str, query_hw))}
    header = {k: str(v) for k, v in meta.items() if k != "kind"}
    entry = {**meta, "images": sel.images, "guidance": sel.halves, "format": fmt, "dtype": arr.dtype.str,
             "shape": list(arr.shape)}
    name = f"{layer}-step{step:03d}-{feature}.{fmt}"
    return [output.write(name, array_file(fmt, {feature: arr}, header), entry)]

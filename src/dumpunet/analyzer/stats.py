"""Summary statistics of many runs, computed on dask: ``dumpunet stats``.

Per block, step, image, guidance half and channel (of samplers with several U-Net calls per step, the
step's first call, as every command reads): ``mean``, ``std`` (population), ``absmax``
and ``l2`` (the channel map's Euclidean norm) over the map's pixels; per attention layer, step,
image, guidance half, head and token (``--layers``): ``entropy``, the Shannon entropy in nats of
where the token is attended, i.e. of the token's ``qk`` column normalised over the query
pixels (``log(pixels)`` for attention spread evenly, 0 for one pixel). Values are computed in
float64 from the stored values.

The stores are opened as lazy datasets (:func:`dumpunet.store.dataset.open_dataset`) and every
statistic of every run is computed in one ``dask.compute``, so each chunk is read once, on the
worker that reduces it. Where it runs (``scheduler``):

- ``"threads"`` (default): dask's threaded scheduler in this process. Reading a chunk and the
  numpy reductions release the GIL, and each chunk shrinks to a few numbers at once, so threads
  use the cores without a cluster's start-up (a second or more) or pickling of chunks;
- ``"local"``: a :class:`distributed.LocalCluster` of worker processes (``jobs`` of them), for
  work where Python-level overhead per chunk dominates;
- ``"tcp://HOST:PORT"``: an existing dask.distributed cluster (its workers must see the stores
  at the same paths, or reach their URLs: a URL's storage options travel with each task).

Output (:class:`~dumpunet.analyzer.output.OutputFolder`): ``stats.csv`` (blocks) and
``attention-stats.csv`` (layers), or ``.parquet`` with ``format="parquet"`` (needs pyarrow).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dumpunet.analyzer.cluster import compute_kwargs
from dumpunet.analyzer.output import OutputFolder, WrittenFile
from dumpunet.analyzer.pick import Pick
from dumpunet.errors import OptionError, SelectionError
from dumpunet.specs import parse_ints
from dumpunet.store.location import StoreUrl, locate

__all__ = ["ATTENTION_COLUMNS", "BLOCK_COLUMNS", "FORMATS", "block_stats", "write_stats"]

BLOCK_COLUMNS = ("store", "run", "block", "step", "timestep", "image", "guidance", "channel", "mean", "std", "absmax", "l2")
ATTENTION_COLUMNS = ("store", "run", "layer", "step", "timestep", "image", "guidance", "head", "token", "token_label",
                     "entropy")
FORMATS = ("csv", "parquet")


def _selection(ds: Any, store: Any, pick: Pick) -> dict[str, Any]:
    """``.sel``/``.isel`` arguments of a pick's steps, images and guidance halves for one run's dataset."""
    r = store.run(pick.run)
    steps = store.select_steps(pick.steps, run=r.name)
    if not steps:
        raise SelectionError(f"run {r.name!r} of {store.path} has no completely written step")
    images = parse_ints(pick.images, 0, r.n_images - 1, noun="image", what="image spec")
    halves = list(pick.halves or r.guidance_labels)
    for g in halves:
        r.guidance_index(g)
    return {"step": steps, "image": images, "guidance": halves}


STATS = ("mean", "std", "absmax", "l2")


def _chunk_stats(x: np.ndarray) -> np.ndarray:
    """``[..., C, H, W]`` -> ``[..., C, 4]``: mean, std, abs-max, L2 norm of each map, in float64."""
    m = x.astype(np.float64).reshape(*x.shape[:-2], -1)
    return np.stack([m.mean(-1), m.std(-1), np.abs(m).max(-1), np.sqrt((m * m).sum(-1))], axis=-1)


def _chunk_entropy(x: np.ndarray) -> np.ndarray:
    """``[..., query, token]`` -> ``[..., token]``: entropy (nats) of each token's column normalised over the queries."""
    a = x.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / a.sum(-2, keepdims=True)  # an all-zero column has no distribution: NaN
        return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-2)


def _block_results(ds: Any) -> dict[str, Any]:
    """Per block: a dask array ``[step, image, guidance, channel, 4]`` of :data:`STATS`, one task per chunk."""
    out = {}
    for name, var in ds.data_vars.items():
        if "." in name and not name.endswith(".input"):
            continue
        x = var.data
        out[name] = x.map_blocks(_chunk_stats, dtype=np.float64, drop_axis=(4, 5), new_axis=4,
                                 chunks=(*x.chunks[:4], (len(STATS),)))
    return out


def _attention_results(ds: Any) -> dict[str, Any]:
    """Per layer: a dask array ``[step, image, guidance, head, token]`` of token entropies, one task per chunk."""
    out = {}
    for name, var in ds.data_vars.items():
        if name.endswith(".qk"):
            x = var.data
            out[name[: -len(".qk")]] = x.map_blocks(_chunk_entropy, dtype=np.float64, drop_axis=4,
                                                    chunks=(*x.chunks[:4], x.chunks[5]))
    return out


def block_stats(sources: Sequence[str | os.PathLike[str] | StoreUrl], pick: Pick, *, layers: str | None = None,
                scheduler: str = "threads", jobs: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the block table and of the attention table (empty without ``layers``), computed on dask.

    Examples
    --------
    >>> rows, _ = block_stats(["girl.zarr", "boy.zarr"], Pick(blocks="OUT11", steps="20"))  # doctest: +SKIP
    >>> rows[0]["block"], rows[0]["channel"]  # doctest: +SKIP
    ('OUT11', 0)
    """
    import dask

    from dumpunet.store.dataset import run_dataset
    from dumpunet.store.reader import open_store

    if not sources:
        raise SelectionError("no stores given")
    lazy = []
    for src in sources:
        store = open_store(src)
        ds = run_dataset(store, pick.run, blocks=pick.blocks, which=pick.which, layers=layers)
        if "call" in ds.dims:  # several U-Net calls per step: the first of each, as every command reads
            first = np.flatnonzero(ds["substep"].values == 0)
            ds = ds.isel(call=first).drop_indexes("step").swap_dims(call="step")
        narrow = {d: v for d, v in _selection(ds, store, pick).items() if ds[d].values.tolist() != v}
        ds = ds.sel(narrow) if narrow else ds  # each .sel is a graph operation per variable: only where it narrows
        lazy.append((store, ds, _block_results(ds), _attention_results(ds) if layers is not None else {}))
    with compute_kwargs(scheduler, jobs) as how:
        (computed,) = dask.compute([(b, a) for *_, b, a in lazy], **how)
    blocks: list[dict[str, Any]] = []
    attention: list[dict[str, Any]] = []
    for (store, ds, _, _), (b, a) in zip(lazy, computed, strict=True):
        where = {"store": str(store.path), "run": ds.attrs["run"]}
        axes = [ds[d].values.tolist() for d in ("step", "timestep", "image", "guidance")]
        for name, stats in b.items():
            blocks.extend(_rows(where, name, stats, *axes))
        for name, entropy in a.items():
            token_dim = ds[f"{name}.qk"].dims[-1]
            labels = next((ds[c] for c in ds.coords if str(c).startswith("token_label") and token_dim in ds[c].dims), None)
            kept = next((ds[c].values.tolist() for c in ds.coords if str(c).startswith("token_position")
                         and ds[c].dims == (token_dim,)), None)  # --attention-tokens: positions, not entries
            attention.extend(_attention_rows(where, name, entropy, *axes, labels, kept))
    return blocks, attention


def _rows(where: dict[str, Any], block: str, stats: np.ndarray, steps: list[int], timesteps: list[float],
          images: list[int], halves: list[str]) -> Iterator[dict[str, Any]]:
    for a, (step, timestep) in enumerate(zip(steps, timesteps, strict=True)):
        for b, image in enumerate(images):
            for c, g in enumerate(halves):
                for ch in range(stats.shape[3]):
                    yield {**where, "block": block, "step": step, "timestep": timestep, "image": image, "guidance": g,
                           "channel": ch, **{k: float(v) for k, v in zip(STATS, stats[a, b, c, ch], strict=True)}}


def _attention_rows(where: dict[str, Any], layer: str, e: np.ndarray, steps: list[int], timesteps: list[float],
                    images: list[int], halves: list[str], labels: Any,
                    positions: list[int] | None = None) -> Iterator[dict[str, Any]]:
    label_of = {g: labels.sel(guidance=g).values.tolist() for g in halves} if labels is not None else {}
    for a, (step, timestep) in enumerate(zip(steps, timesteps, strict=True)):
        for b, image in enumerate(images):
            for c, g in enumerate(halves):
                for h in range(e.shape[3]):
                    for t in range(e.shape[4]):
                        yield {**where, "layer": layer, "step": step, "timestep": timestep, "image": image,
                               "guidance": g, "head": h, "token": positions[t] if positions is not None else t,
                               "token_label": label_of[g][t] if g in label_of else "", "entropy": float(e[a, b, c, h, t])}


def _table(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str) -> bytes:
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise OptionError("--format parquet needs pyarrow (pip install pyarrow)") from None
        table = pa.table({c: [r[c] for r in rows] for c in columns})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue().encode()


def write_stats(sources: Sequence[str | os.PathLike[str] | StoreUrl], pick: Pick, *, out: str | os.PathLike[str],
                layers: str | None = None, scheduler: str = "threads", jobs: int | None = None,
                format: str = "csv") -> list[WrittenFile]:  # noqa: A002 - the option's name
    """Compute :func:`block_stats` and write ``stats.<format>`` (and ``attention-stats.<format>``) into ``out``."""
    if format not in FORMATS:
        raise OptionError(f"unknown format {format!r} (valid: {', '.join(FORMATS)})")
    if format == "parquet":
        _table([], BLOCK_COLUMNS, format)  # refuse before computing when pyarrow is missing
    output = OutputFolder(out)
    blocks, attention = block_stats(sources, pick, layers=layers, scheduler=scheduler, jobs=jobs)
    common = {"kind": "stats", "stores": [str(locate(s)) for s in sources], "blocks": pick.blocks, "steps": pick.steps,
              "images": pick.images, "guidance": pick.guidance, "which": pick.which}
    with output:
        files = [output.write(f"stats.{format}", _table(blocks, BLOCK_COLUMNS, format), {**common, "rows": len(blocks)})]
        if layers is not None:
            files.append(output.write(f"attention-stats.{format}", _table(attention, ATTENTION_COLUMNS, format),
                                      {**common, "kind": "attention-stats", "layers": layers, "rows": len(attention)}))
    return files

"""Stores as lazy, dask-backed :class:`xarray.Dataset` values (needs the ``dask`` extra).

:func:`open_dataset` maps one run of a store, or every run of many stores, onto named dims and
coordinates (the mapping is documented in ``docs/store-format.md``, "Stores as xarray datasets"):

- one variable per block (``OUT11``; ``OUT11.input`` with ``which="input"``) with dims
  ``step, image, guidance, channel, y, x``, and per attention array (``IN01.attn2.qk``) with dims
  ``step, image, guidance, head, query, token`` (``k``/``vqk``: ``head_dim``);
- ``step`` is the dimension when every selected call is the only call of its step; samplers with
  several U-Net calls per step (Heun, DPM2, ...) get a ``call`` dimension with ``step`` indexed
  along it, so ``.sel(step=10)`` selects both calls. Coordinates ``substep`` and ``timestep`` lie
  along it; only completely written steps are included;
- ``guidance`` is labelled (``uncond``, ``cond``); cross-attention arrays carry the prompt's
  tokens as ``token_label`` (``guidance, token``);
- a dim whose size differs between the selected variables is named with its size
  (``channel_320``, ``y_64``): select blocks of one shape to keep plain ``channel, y, x``;
- several runs are stacked along ``run`` (labels: the store's folder name, ``name:run`` where a
  store holds several runs), with coordinates ``store`` and ``run_name``; steps are matched by
  number (a step a run lacks reads as NaN).

Every chunk is read by dumpunet's checked reader on whichever dask worker computes it (the store
is opened there by its path, or its URL with the storage options), one chunk per (call, image, guidance) slab, so a damaged chunk is a
:class:`~dumpunet.errors.DamagedChunkError`, never zeros. Nothing is read until computed.

Examples
--------
>>> ds = open_dataset(["girl.zarr", "boy.zarr"], blocks="OUT11")  # doctest: +SKIP
>>> ds["OUT11"].mean(["y", "x"]).sel(guidance="cond", step=20).compute()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dumpunet.errors import SelectionError, StoreError
from dumpunet.specs import parse_ints
from dumpunet.store import schema
from dumpunet.store.location import Location, StoreUrl, locate_all

if TYPE_CHECKING:
    import xarray as xr

    from dumpunet.store.reader import Run, Store

__all__ = ["open_dataset", "run_dataset"]

Source = str | os.PathLike[str] | StoreUrl

_STORES: dict[tuple[Location, int | None], Store] = {}
_STORES_LOCK = threading.Lock()


def _store(where: Location) -> Store:
    """The store at ``where``, opened once per process (each dask worker opens its own).

    A URL comes with its storage options (they pickle with it). A local store is keyed by its
    root document's modification time too, so a store recorded again at the same path
    (``--overwrite``) is opened afresh.
    """
    stamp: int | None = None
    if isinstance(where, Path):
        try:
            stamp = os.stat(where / "zarr.json").st_mtime_ns
        except OSError:
            pass
    with _STORES_LOCK:
        if (where, stamp) not in _STORES:
            from dumpunet.store.reader import open_store

            _STORES[(where, stamp)] = open_store(where)
        return _STORES[(where, stamp)]


@dataclass(frozen=True)
class SlabReader:
    """A lazily read per-call array for :func:`dask.array.from_array`: chunks come from dumpunet's checked reader.

    Holds names only (it travels to dask workers): the store's path (or URL with its storage options), the run, the array's kind and
    path names, and the calls it exposes, in order. Calls outside ``written`` (self-attention
    recorded at fewer steps) read as NaN.
    """

    path: Location
    run: str
    kind: str  # schema.BLOCK_ARRAYS / ATTENTION_FEATURES key
    names: tuple[tuple[str, str], ...]
    calls: tuple[int, ...]
    written: tuple[bool, ...]
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, str(self.path), self.run, self.kind, self.names, self.calls, self.written, self.shape, str(self.dtype))

    def _array(self, run: Run) -> Any:
        names = dict(self.names)
        if "block" in names:
            return run.array(names["block"], self.kind)  # type: ignore[arg-type]
        return run.attention_array(names["layer"], self.kind)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        run = _store(self.path).run(self.run)
        arr = self._array(run)
        ks, iis, gs = (range(*k.indices(n)) for k, n in zip(key[:3], self.shape[:3], strict=True))
        rest = key[3:]
        slab_shape = tuple(len(range(*k.indices(n))) for k, n in zip(rest, self.shape[3:], strict=True))
        out = np.empty((len(ks), len(iis), len(gs), *slab_shape), self.dtype)
        for a, k in enumerate(ks):
            for b, i in enumerate(iis):
                for c, g in enumerate(gs):
                    if not self.written[k]:
                        out[a, b, c] = np.nan
                        continue
                    out[a, b, c] = run.read_slab(arr, self.calls[k], i, g)[rest]
        return out


@dataclass(frozen=True)
class _Var:
    """One variable of a run's dataset before its dims get their final names."""

    name: str
    dims: tuple[str, ...]  # schema dims with call -> the call dim
    reader: SlabReader
    token_labels: np.ndarray | None = None  # [guidance, token]
    token_positions: tuple[int, ...] | None = None  # --attention-tokens: the prompt position of each token entry


def _calls(run: Run) -> list[int]:
    """The calls of completely written steps, in order."""
    table = run.calls
    complete = set(run.steps)
    return [k for k in range(len(table)) if int(table.step[k]) in complete and table.done[k]]


def _variables(store: Store, run: Run, *, blocks: str, which: str, layers: str | None, feature: str,
               calls: list[int]) -> list[_Var]:
    path = store.path
    steps = run.calls.step
    out: list[_Var] = []
    every = tuple(True for _ in calls)
    for block in store.select_blocks(blocks, run=run.name, which=which):  # type: ignore[arg-type]
        kind = schema.BLOCK_ARRAYS[which]
        arr = run.array(block, which)  # type: ignore[arg-type]
        shape = (len(calls), *arr.shape[1:])
        reader = SlabReader(path, run.name, which, (("block", block),), tuple(calls), every, shape, np.dtype(arr.dtype))
        name = block if which == "output" else f"{block}.input"
        out.append(_Var(name, kind.dims, reader))
    if layers is None:
        return out
    kind = schema.ATTENTION_FEATURES[feature]
    for layer in store.select_layers(layers, run=run.name):
        arr = run.attention_array(layer, feature)
        info = run.layer_info(layer, feature)
        only = set(parse_ints(info.recorded_steps, 0, None)) if info.recorded_steps else None
        written = tuple(only is None or int(steps[k]) in only for k in calls)
        dtype = np.dtype(arr.dtype) if all(written) else np.result_type(arr.dtype, np.float32)
        reader = SlabReader(path, run.name, feature, (("layer", layer),), tuple(calls), written,
                            (len(calls), *arr.shape[1:]), dtype)
        tokens = info.cross_attention and feature != "vqk"
        positions = info.token_positions(arr.shape[kind.axis("token")]) if tokens else None
        labels = _token_labels(run, layer, positions) if positions is not None else None
        out.append(_Var(f"{layer}.{feature}", kind.dims, reader, labels, info.kept_tokens if tokens else None))
    return out


def _token_labels(run: Run, layer: str, positions: Sequence[int]) -> np.ndarray | None:
    """``[guidance, token]`` token strings at the stored ``positions`` of a cross-attention layer's prompt
    ('' past its end), or None."""
    rows = []
    for g in run.guidance_labels:
        row = run.token_row(guidance=g, block=layer)
        if row is None:
            return None
        rows.append([row.tokens[p] if p < len(row.tokens) else "" for p in positions])
    return np.array(rows, dtype=object)


def _dim_names(all_vars: Iterable[_Var]) -> dict[tuple[str, int], str]:
    """(schema dim, size) -> dataset dim: the plain name unless sizes differ, then ``name_size``."""
    sizes: dict[str, set[int]] = {}
    for v in all_vars:
        for d, n in zip(v.dims[3:], v.reader.shape[3:], strict=True):
            sizes.setdefault(d, set()).add(n)
    return {(d, n): d if len(ns) == 1 else f"{d}_{n}" for d, ns in sizes.items() for n in ns}


def _scalar_attrs(run: Run) -> dict[str, Any]:
    keep = {}
    for key, value in run.info.to_json().items():
        if isinstance(value, (str, int, float, bool)) and not isinstance(value, np.generic):
            keep[key] = value
    return keep


def _build(store: Store, run: Run, variables: list[_Var], calls: list[int], dims: dict[tuple[str, int], str]) -> xr.Dataset:
    import dask.array as da
    import xarray as xr

    table = run.calls
    step = table.step[calls].astype(np.int64)
    substep = table.substep[calls].astype(np.int64)
    timestep = table.timestep[calls].astype(np.float32)
    one_call = bool(np.all(substep == 0)) and len(set(step.tolist())) == len(step)
    call_dim = "step" if one_call else "call"
    data: dict[str, Any] = {}
    coords: dict[str, Any] = {
        "guidance": ("guidance", np.array(run.guidance_labels, dtype=object)),
        "image": ("image", np.arange(run.n_images)),
        "step": (call_dim, step),
        "substep": (call_dim, substep),
        "timestep": (call_dim, timestep),
    }
    for v in variables:
        r = v.reader
        token = hashlib.sha1(repr(r.__dask_tokenize__()).encode()).hexdigest()[:16]
        arr = da.from_array(r, chunks=(1, 1, 1, *r.shape[3:]), name=f"dumpunet-{v.name}-{token}", asarray=False,
                            fancy=False, meta=np.empty((0,) * r.ndim, r.dtype))
        vdims = (call_dim, "image", "guidance", *(dims[(d, n)] for d, n in zip(v.dims[3:], r.shape[3:], strict=True)))
        data[v.name] = (vdims, arr)
        if v.token_labels is not None:
            token_dim = vdims[v.dims.index("token")]
            coords.setdefault(f"token_label_{token_dim}" if token_dim != "token" else "token_label",
                              (("guidance", token_dim), v.token_labels))
        if v.token_positions is not None:
            token_dim = vdims[v.dims.index("token")]
            coords.setdefault(f"token_position_{token_dim}" if token_dim != "token" else "token_position",
                              (token_dim, np.array(v.token_positions)))
    ds = xr.Dataset(data, coords=coords, attrs={"store": str(store.path), "run": run.name, **_scalar_attrs(run)})
    if not one_call:
        ds = ds.set_xindex("step")
    return ds


def _label(path: Location) -> str:
    name = path.resolve().name
    return name[: -len(".zarr")] if name.endswith(".zarr") and len(name) > 5 else name


def run_dataset(store: Store, run: str | None = None, *, blocks: str = "", which: str = "output",
                layers: str | None = None, feature: str = "qk") -> xr.Dataset:
    """One run of an open store as a lazy dataset (see the module); this is ``Store.to_xarray``."""
    r = store.run(run)
    calls = _calls(r)
    if not calls:
        raise SelectionError(f"run {r.name!r} of {store.path} has no completely written step")
    variables = _variables(store, r, blocks=blocks, which=which, layers=layers, feature=feature, calls=calls)
    if not variables:
        raise SelectionError(f"run {r.name!r} of {store.path} has no recorded block {which}s")
    return _build(store, r, variables, calls, _dim_names(variables))


def open_dataset(sources: Source | Sequence[Source], *, run: str | None = None, blocks: str = "",
                 which: str = "output", layers: str | None = None, feature: str = "qk",
                 storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open one or many stores as one lazy, dask-backed :class:`xarray.Dataset` (see the module).

    One source gives one run (``run``, default: the store's default run) without a ``run`` dim;
    several sources give every run of each (or just ``run``) stacked along ``run``. ``blocks``
    picks blocks (spec grammar, empty = every recorded one); ``layers`` attention layers (None =
    none, empty = every recorded one) and ``feature`` their array (qk, k, vqk). ``storage_options``
    reach the sources given as URLs (as ``dumpunet.open``'s do), also on the dask workers that
    read the chunks.

    Examples
    --------
    >>> ds = open_dataset("girl.zarr", blocks="OUT11")  # doctest: +SKIP
    >>> ds["OUT11"].sel(guidance="cond", step=20).mean(["y", "x"]).values  # doctest: +SKIP
    """
    from dumpunet.store.reader import open_store

    many = not isinstance(sources, (str, os.PathLike, StoreUrl))
    paths = locate_all(list(sources) if many else [sources], storage_options)  # type: ignore[list-item, arg-type]
    if not paths:
        raise SelectionError("no stores given")
    if not many:
        return run_dataset(open_store(paths[0]), run, blocks=blocks, which=which, layers=layers, feature=feature)
    import xarray as xr

    parts: list[tuple[str, Store, Run, list[int], list[_Var]]] = []
    for p in paths:
        store = open_store(p)
        names = [run] if run is not None else store.run_names
        for name in names:
            r = store.run(name)
            calls = _calls(r)
            if not calls:
                raise SelectionError(f"run {r.name!r} of {store.path} has no completely written step")
            variables = _variables(store, r, blocks=blocks, which=which, layers=layers, feature=feature, calls=calls)
            label = _label(store.path) if len(names) == 1 else f"{_label(store.path)}:{r.name}"
            parts.append((label, store, r, calls, variables))
    labels = [p[0] for p in parts]
    if len(set(labels)) != len(labels):  # two stores of the same folder name: the full paths tell them apart
        labels = [str(p[1].path.resolve()) + ("" if ":" not in p[0] else ":" + p[2].name) for p in parts]
        twice = next((x for x in labels if labels.count(x) > 1), None)
        if twice is not None:
            raise SelectionError(f"{twice} is given twice")
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for label, _, _, _, variables in parts:
        for v in variables:
            first = shapes.setdefault(v.name, (label, v.reader.shape[3:]))
            if first[1] != v.reader.shape[3:]:
                raise StoreError(f"the stores cannot be stacked: {v.name} is {'x'.join(map(str, first[1]))} in {first[0]} "
                                 f"but {'x'.join(map(str, v.reader.shape[3:]))} in {label}; open them one by one")
    dims = _dim_names(v for p in parts for v in p[4])
    datasets = [_build(store, r, variables, calls, dims) for _, store, r, calls, variables in parts]
    call_dims = {"step" if "step" in ds.dims else "call" for ds in datasets}
    if call_dims != {"step"} and len(datasets) > 1:
        raise StoreError("several stores of a sampler with more than one U-Net call per step cannot be stacked by step; "
                         "open them one by one")
    try:
        out = xr.concat(datasets, dim="run", join="outer", coords="different", compat="equals",
                        combine_attrs="drop_conflicts", fill_value=np.nan)
    except ValueError as exc:
        raise StoreError(f"the stores cannot be stacked: {exc}") from None
    for key in ("store", "run"):  # per run now: coordinates
        out.attrs.pop(key, None)
    return out.assign_coords(run=("run", labels), store=("run", [str(p[1].path) for p in parts]),
                             run_name=("run", [p[2].name for p in parts]))

"""Read a dumpunet store: the read-only object behind ``dumpunet.open``.

Reads touch only the chunks they need: ``features(block, step=...)`` reads one
(call, image, guidance) chunk of one block.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any, Literal, TypeVar

import numpy as np
import zarr

from dumpunet.store import schema
from dumpunet.store.calls import CallTable, read_call_table
from dumpunet.store.chunks import ChunkFiles, layout_problem, read_chunk, read_chunk_rows
from dumpunet.store.location import Location, StoreUrl, locate, total_bytes
from dumpunet.store.readahead import ChunkRef
from dumpunet.errors import IncompleteStepError, SelectionError, StoreError
from dumpunet.specs import format_ints, parse_blocks, parse_ints, parse_layers, resolve_block

Which = Literal["output", "input"]

T = TypeVar("T")
R = TypeVar("R")

REPR_RUNS = 6
"""A store's repr names this many runs at most (a prompt list may hold thousands)."""


def concurrently(fn: Callable[[T], R], items: Sequence[T], where: Location) -> list[R]:
    """``[fn(item) for item in items]``; for a store at a URL on up to zarr's ``async.concurrency`` threads.

    Opening an array reads its metadata document, one request each; from a URL they overlap
    instead of adding up (each thread's request runs on zarr's event loop). The first failure,
    in ``items``' order, is raised, as the loop would raise it.
    """
    if not isinstance(where, StoreUrl) or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(len(items), max(1, int(zarr.config.get("async.concurrency"))))) as pool:
        return list(pool.map(fn, items))


class Run:
    """One generation inside a store (``main``, or ``base``/``layered`` of a pair)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        try:
            grp = schema.node(store.root, schema.run_group_path(name))
        except KeyError:
            raise StoreError(f"{store.path}: run {name!r} is listed but missing") from None
        self.info: schema.RunAttrs = schema.RunAttrs.from_json(dict(grp.attrs), f"{store.path}: run {name}")
        self._layers: dict[tuple[str, str], schema.LayerAttrs] = {}
        self._recorded: dict[str, list[str]] = {}
        self._arrays: dict[str, zarr.Array] = {}
        self._last_image: tuple[int, np.ndarray] | None = None  # (index, pixels) of the final image read last
        self._opened: dict[str, zarr.Array] = {}  # opened by recorded(), after the call table; checked by _open

    def __repr__(self) -> str:
        a = self.info
        status = "complete" if a.complete else "incomplete"
        prompt = f" prompt={a.prompt!r}" if a.prompt is not None else ""
        seed = f" seed={a.seed}" if a.seed is not None else ""
        return f"<dumpunet.Run {self.name!r}{prompt}{seed} {status}>"

    @cached_property
    def calls(self) -> CallTable:
        return read_call_table(self.store.root, self.store.files, self.name, str(self.store.path))

    def _open(self, kind: schema.ArrayKind, slab: tuple[int, ...] | None = None, **names: str) -> zarr.Array:
        """Open a per-call array once for this run object, checked (:meth:`_check_slab_array`); a missing one raises KeyError.

        Opening reads the array's metadata (a few ms, more than a small chunk), and a heatmap reads
        16 layers x 20 steps. The call table is loaded first: the writer grows an array before it
        marks a call done, so an array opened after the table covers every call the table lists. A
        store opened again (the viewer's live poll) has new run objects that see later steps.
        """
        path = kind.path(run=self.name, **names)
        if path not in self._arrays:
            self.calls  # noqa: B018 - load the call table before the array (see above)
            arr = self._opened.pop(path, None)
            if arr is None:
                arr = schema.open_array(self.store.root, kind, run=self.name, **names)
            self._check_slab_array(arr, kind, slab)
            self._arrays[path] = arr
        return self._arrays[path]

    @property
    def steps(self) -> list[int]:
        """Completely recorded sampler steps, ascending."""
        return self.calls.complete_steps

    @property
    def complete(self) -> bool:
        """Whether the recording of this run finished (final images written)."""
        return self.info.complete

    @property
    def guidance_labels(self) -> list[str]:
        return list(self.info.guidance)

    @property
    def n_images(self) -> int:
        return self.info.n_images

    def recorded(self, which: Which = "output") -> list[str]:
        """Blocks of this run that hold ``which`` arrays, in block order (the writer creates them all as the run begins)."""
        if which in self._recorded:
            return list(self._recorded[which])
        kind = schema.BLOCK_ARRAYS[which]
        self.calls  # noqa: B018 - as _open does, so that it may take the arrays opened here

        def open_block(b: str) -> zarr.Array | None:  # one node per block, so a damaged zarr.json is named by its path
            try:
                return schema.open_array(self.store.root, kind, run=self.name, block=b)
            except KeyError:
                return None

        try:
            arrays = dict(zip(self.store.blocks, concurrently(open_block, self.store.blocks, self.store.path), strict=True))
        except StoreError as exc:
            raise StoreError(f"{self.store.path}: {exc}") from None
        self._opened.update({arr.path: arr for arr in arrays.values() if arr is not None})
        self._recorded[which] = [b for b, arr in arrays.items() if arr is not None]
        return list(self._recorded[which])

    def array(self, block: str, which: Which = "output") -> zarr.Array:
        """The zarr array ``[call, image, guidance, channel, y, x]`` of one block."""
        name = self.store.resolve_block(block)
        info = next(b for b in self.store.block_table if b.name == name)
        want = info.output_shape if which == "output" else info.input_shape
        try:
            return self._open(schema.BLOCK_ARRAYS[which], tuple(want), block=name)
        except KeyError:
            got = self.recorded(which)
            raise SelectionError(
                f"block {name} has no recorded {which} in run {self.name!r} "
                f"(recorded: {', '.join(got) if got else 'none'})"
            ) from None

    def _check_slab_array(self, arr: zarr.Array, kind: schema.ArrayKind, slab: tuple[int, ...] | None = None) -> None:
        """Refuse a slab array whose layout, image or guidance axes (or ``slab`` shape) the store's attributes contradict."""
        problem = layout_problem(arr.path, arr, kind)
        attrs = schema.LayerAttrs if kind in schema.ATTENTION_FEATURES.values() else schema.ArrayAttrs
        attrs.from_json(dict(arr.attrs), f"{self.store.path}: {arr.path}")
        axes = (arr.shape[kind.axis("image")], arr.shape[kind.axis("guidance")])
        if problem is None and axes != (self.n_images, len(self.guidance_labels)):
            problem = f"{arr.path}: image/guidance axes {axes}, run attributes say {(self.n_images, len(self.guidance_labels))}"
        if problem is None and slab is not None and kind.slab_shape(arr.shape) != slab:
            problem = f"{arr.path}: shape {kind.slab_shape(arr.shape)}, block table says {slab}"
        if problem is not None:
            raise StoreError(f"{self.store.path}: {problem}")

    def read_slab(self, arr: zarr.Array, call: int, image: int, guidance: int) -> np.ndarray:
        """One ``(call, image, guidance)`` slab of a block or attention array, its chunk file checked first.

        A chunk that is missing, of the wrong size or not a regular file raises
        :class:`~dumpunet.errors.DamagedChunkError` naming the array, call and step (never fill values).
        """
        what = f"call {call} (step {int(self.calls.step[call])}), image {image}, {self.guidance_labels[guidance]}"
        return read_chunk(self.store.files, arr, self.slab_chunk(arr, call, image, guidance).coords, what)[0, 0, 0]

    def slab_chunk(self, arr: zarr.Array, call: int, image: int, guidance: int) -> ChunkRef:
        """The chunk that :meth:`read_slab` reads (for :func:`~dumpunet.store.readahead.read_ahead`)."""
        return ChunkRef(self.store.files, arr, (call, image, guidance) + (0,) * (arr.ndim - 3))

    def guidance_index(self, guidance: str) -> int:
        labels = self.guidance_labels
        if guidance not in labels:
            hint = " (classifier-free guidance was off)" if guidance == "uncond" else ""
            raise SelectionError(f"guidance {guidance!r} not recorded{hint}; choose from {', '.join(labels)}")
        return labels.index(guidance)

    def features(
        self,
        block: str,
        step: int,
        *,
        guidance: str = "cond",
        image: int = 0,
        substep: int = 0,
        which: Which = "output",
        dtype: str | np.dtype | None = None,
    ) -> np.ndarray:
        """Return one block's ``[C, H, W]`` map at a sampler step (reads one chunk).

        Examples
        --------
        >>> x = store.features("OUT11", step=20)  # doctest: +SKIP
        """
        arr = self.array(block, which)
        k = self._slab_call(arr, schema.BLOCK_ARRAYS[which], step, substep, image, f"block {block}")
        out = self.read_slab(arr, k, image, self.guidance_index(guidance))
        return out.astype(dtype) if dtype is not None else out

    def _slab_call(self, arr: zarr.Array, kind: schema.ArrayKind, step: int, substep: int, image: int, what: str) -> int:
        """The call index of (step, substep) in a slab array, after checking the image index."""
        n_images = arr.shape[kind.axis("image")]
        if not 0 <= image < n_images:
            raise SelectionError(f"image {image} out of range 0..{n_images - 1}")
        k = self.calls.index(step, substep)
        if k >= arr.shape[kind.axis("call")]:
            raise IncompleteStepError(f"step {step} of {what} was not written")
        return k

    # ------------------------------------------------------------------ attention

    @property
    def attention_layers(self) -> list[str]:
        """Attention layers recorded in this run, in U-Net order (``IN01.attn2``, ...)."""
        return list(self.info.attention_layers)

    def _layer_name(self, layer: str) -> str:
        name = next((n for n in self.attention_layers if n.upper() == layer.upper()), None)
        if name is None:
            got = self.attention_layers
            raise SelectionError(
                f"no attention layer {layer!r} recorded in run {self.name!r} "
                + (f"(recorded: {', '.join(got)})" if got else "(this store was recorded without attention)")
            )
        return name

    def attention_array(self, layer: str, feature: str = "qk") -> zarr.Array:
        """The zarr array of one attention feature, e.g. qk ``[call, image, guidance, head, query, token]``."""
        name = self._layer_name(layer)
        try:
            return self._open(schema.ATTENTION_FEATURES[feature], layer=name)
        except KeyError:
            raise SelectionError(f"layer {name} has no recorded {feature!r} (record with --attention {feature})") from None

    def layer_info(self, layer: str, feature: str = "qk") -> schema.LayerAttrs:
        """The attributes of one attention array: the layer's size, which query pixels were kept, ..."""
        key = (self._layer_name(layer), feature)
        if key not in self._layers:
            arr = self.attention_array(*key)
            self._layers[key] = schema.LayerAttrs.from_json(dict(arr.attrs), f"{self.store.path}: {arr.path}")
        return self._layers[key]

    def attention(
        self,
        layer: str,
        step: int,
        *,
        feature: str = "qk",
        guidance: str = "cond",
        image: int = 0,
        substep: int = 0,
        dtype: str | np.dtype | None = None,
    ) -> np.ndarray:
        """Return one layer's attention feature at a step: qk ``[head, query, token]`` (reads one chunk)."""
        arr, k, g = self._attention_slab(layer, step, feature, guidance, image, substep)
        out = self.read_slab(arr, k, image, g)
        return out.astype(dtype) if dtype is not None else out

    def attention_rows(
        self,
        layer: str,
        step: int,
        *,
        scratch: np.ndarray,
        feature: str = "qk",
        guidance: str = "cond",
        image: int = 0,
        substep: int = 0,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`attention`'s ``[head, query, token]`` as blocks of its rows ``[n, token]`` (rows ``head * query``
        in order), each with the index of its first row, read in turn through ``scratch`` (flat uint8).

        A block is valid until the next is read (:func:`~dumpunet.store.chunks.read_chunk_rows`): for
        passes over many chunks that keep a little of each, such as a word heatmap's.
        """
        arr, k, g = self._attention_slab(layer, step, feature, guidance, image, substep)
        what = f"call {k} (step {int(self.calls.step[k])}), image {image}, {self.guidance_labels[g]}"
        return read_chunk_rows(self.store.files, arr, self.slab_chunk(arr, k, image, g).coords, what, scratch)

    def _attention_slab(self, layer: str, step: int, feature: str, guidance: str, image: int,
                        substep: int) -> tuple[zarr.Array, int, int]:
        """The array, call index and guidance index of one attention slab, checked."""
        arr = self.attention_array(layer, feature)
        g = self.guidance_index(guidance)
        only = self.layer_info(layer, feature).recorded_steps
        if only and step not in parse_ints(only, 0, None):
            raise SelectionError(f"layer {layer} was recorded at steps {only} only, not at step {step}")
        return arr, self._slab_call(arr, schema.ATTENTION_FEATURES[feature], step, substep, image, f"layer {layer}"), g

    def token_row(self, *, guidance: str = "cond", image: int = 0, block: str | None = None) -> schema.TokenRow | None:
        """What the text encoder read for one half of the batch (ids, token strings, real length).

        With per-block prompts, ``block`` (or a layer name) picks that block's prompt. None where
        nothing was encoded (SDXL's zeroed empty negative prompt) or the pipeline got embeddings
        directly. See :meth:`RunAttrs.token_row`.
        """
        return self.info.token_row(guidance, image, block)

    def image(self, i: int = 0) -> np.ndarray:
        """Return the final image ``i`` as uint8 ``[H, W, 3]``, read-only.

        The image read last is kept (one per run object): a viewer draws it under every heatmap,
        and decoding it cost a few ms each time.
        """
        if self._last_image is not None and self._last_image[0] == i:
            return self._last_image[1]
        arr = self._final(schema.IMAGES, "final images (the recording did not finish)")
        h, w = self.info.height, self.info.width
        if h is not None and w is not None and tuple(arr.shape[1:3]) != (h, w):
            raise StoreError(f"{self.store.path}: {arr.path}: {arr.shape[2]}x{arr.shape[1]} pixels, run attributes say {w}x{h}")
        if not 0 <= i < self.n_images:
            raise SelectionError(f"image {i} out of range 0..{self.n_images - 1}")
        image = read_chunk(self.store.files, arr, (i, 0, 0, 0), f"final image {i}")[0]
        image.setflags(write=False)
        self._last_image = (i, image)
        return image

    def _final(self, kind: schema.ArrayKind, what: str) -> zarr.Array:
        """The images or latents array, its layout and image axis checked against the run attributes.

        Opened once per run object, as :meth:`_open` opens the per-call arrays (a viewer draws the
        final image under every heatmap; opening reads metadata, which cost more than the image).
        """
        path = kind.path(run=self.name)
        if path in self._arrays:
            return self._arrays[path]
        try:
            arr = schema.open_array(self.store.root, kind, run=self.name)
        except KeyError:
            raise SelectionError(f"run {self.name!r} has no {what}") from None
        problem = layout_problem(arr.path, arr, kind)
        if problem is None and arr.shape[kind.axis("image")] != self.n_images:
            problem = f"{arr.path}: {arr.shape[kind.axis('image')]} images, run attributes say {self.n_images}"
        if problem is not None:
            raise StoreError(f"{self.store.path}: {problem}")
        self._arrays[path] = arr
        return arr

    def latents(self) -> np.ndarray:
        """Return the final latents ``[image, channel, y, x]`` (float32)."""
        arr = self._final(schema.LATENTS, "final latents")
        return np.concatenate([read_chunk(self.store.files, arr, (i, 0, 0, 0), f"final latents of image {i}")
                               for i in range(self.n_images)])


class Store:
    """A read-only dumpunet store. Open one with :func:`dumpunet.open`.

    Examples
    --------
    >>> store = dumpunet.open("girl.zarr")  # doctest: +SKIP
    >>> store.blocks[:3], store.steps[-1]  # doctest: +SKIP
    (['IN00', 'IN01', 'IN02'], 20)
    """

    def __init__(self, path: str | os.PathLike[str] | StoreUrl, *, storage_options: Mapping[str, Any] | None = None) -> None:
        self.path: Location = locate(path, storage_options)
        self.root = schema.open_root(self.path)
        self.files = ChunkFiles(self.root.store, self.root.path)
        self.info: schema.RootAttrs = schema.RootAttrs.from_json(dict(self.root.attrs), str(self.path))
        self.header: schema.Header = self.info.header
        self.block_table: list[schema.BlockInfo] = list(self.info.blocks)
        self.aliases = schema.block_aliases(self.block_table)
        self.run_names: list[str] = list(self.info.runs)
        self._runs: dict[str, Run] = {}

    def __repr__(self) -> str:
        names = self.run_names
        runs = names if len(names) <= REPR_RUNS else f"[{', '.join(map(repr, names[:REPR_RUNS - 1]))}, ... {len(names)} runs]"
        return f"<dumpunet.Store {str(self.path)!r} runs={runs} blocks={len(self.blocks)} steps={format_ints(self.steps)}>"

    def _repr_html_(self) -> str:
        """The summary table a notebook shows (:func:`dumpunet.store.html.store_html`)."""
        from dumpunet.store.html import store_html

        return store_html(self)

    def show(self, *, height: int = 720, **state: Any) -> Any:
        """Show ``dumpunet view`` of this store in a notebook cell (:func:`dumpunet.view`; the viewer's own import).

        Examples
        --------
        >>> store.show(block="OUT11", step=20)  # doctest: +SKIP
        """
        from dumpunet.viewer.notebook import view

        return view(self, height=height, **state)

    # ------------------------------------------------------------------ structure

    @property
    def blocks(self) -> list[str]:
        """Every block of the model, in the model's order (recorded or not)."""
        return [b.name for b in self.block_table]

    @property
    def metadata(self) -> dict[str, Any]:
        """The root's and every run's attributes, as the JSON the store holds."""
        return {"root": self.info.to_json(), "runs": {name: self.run(name).info.to_json() for name in self.run_names}}

    @property
    def runs(self) -> dict[str, Run]:
        """Every run of the store by name, in recording order (``main``; ``p0000``, ``p0001``, ... of ``record --prompts``).

        Examples
        --------
        >>> [(name, run.info.prompt) for name, run in store.runs.items()]  # doctest: +SKIP
        [('p0000', 'a cat'), ('p0001', 'a dog')]
        """
        return {name: self.run(name) for name in self.run_names}

    @property
    def default_run(self) -> str:
        if not self.run_names:
            raise StoreError(f"{self.path} holds no run yet (the recording stopped before its first U-Net call)")
        for pref in ("main", "layered"):
            if pref in self.run_names:
                return pref
        return self.run_names[0]

    def run(self, name: str | None = None) -> Run:
        """Return one run of the store (default: ``main``, or ``layered`` of a pair)."""
        name = name or self.default_run
        if name not in self.run_names:
            raise SelectionError(f"no run {name!r} in {self.path} (runs: {', '.join(self.run_names) or 'none'})")
        if name not in self._runs:
            self._runs[name] = Run(self, name)
        return self._runs[name]

    @property
    def pairs(self) -> list[schema.PairInfo]:
        """Paired runs (``--pair``, ``sweep``): each with ``base``, ``layered`` and ``label``."""
        return list(self.info.pairs)

    def pair(self, label: str | None = None) -> tuple[Run, Run]:
        """Return the (base, layered) runs of one pair (default: the only or first pair)."""
        pairs = self.pairs
        if not pairs:
            raise SelectionError(f"{self.path} holds no paired runs (record with --pair, or dumpunet sweep)")
        if label is None:
            chosen = pairs[0]
        else:
            found = [p for p in pairs if p.label.upper() == label.upper()]
            if not found:
                raise SelectionError(f"no pair {label!r} in {self.path} (pairs: {', '.join(p.label for p in pairs)})")
            chosen = found[0]
        return self.run(chosen.base), self.run(chosen.layered)

    def resolve_block(self, name: str) -> str:
        """Canonical block name for a block name or diffusers module path."""
        b = resolve_block(name, self.blocks, self.aliases)
        if b is None:
            raise SelectionError(f"unknown block {name!r} (this model has {', '.join(self.blocks)})")
        return b

    def select_blocks(self, spec: str, *, run: str | None = None, which: Which = "output") -> list[str]:
        """Parse a block spec against this model; an empty spec means every recorded block."""
        if not spec.strip():
            return self.run(run).recorded(which)
        return parse_blocks(spec, self.blocks, aliases=self.aliases)

    def select_layers(self, spec: str, *, run: str | None = None) -> list[str]:
        """Parse a layer spec (layer names, or blocks) against the run's recorded attention layers."""
        layers = self.run(run).attention_layers
        if not layers:
            raise SelectionError(f"{self.path} was recorded without attention (record with --attention qk)")
        return parse_layers(spec, layers, self.blocks, aliases=self.aliases, what="layer spec")

    def select_steps(self, spec: str, *, run: str | None = None) -> list[int]:
        """Parse a step spec; an empty spec means every completely recorded step."""
        r = self.run(run)
        if not spec.strip():
            return r.steps
        total = max([r.info.steps, *r.steps])  # stores written without 'steps' know only what they hold
        return parse_ints(spec, 1, total, noun="step", what="step spec")

    # ------------------------------------------------------------------ shortcuts to the default run

    @property
    def steps(self) -> list[int]:
        return self.run().steps if self.run_names else []

    def features(self, block: str, step: int, *, run: str | None = None, **kw: Any) -> np.ndarray:
        """Return ``[C, H, W]`` of one block at one step; see :meth:`Run.features`."""
        return self.run(run).features(block, step, **kw)

    def image(self, i: int = 0, *, run: str | None = None) -> np.ndarray:
        """Return the final image ``i`` as uint8 ``[H, W, 3]``."""
        return self.run(run).image(i)

    def to_xarray(self, run: str | None = None, **options: Any) -> Any:
        """One run as a lazy, dask-backed ``xarray.Dataset`` (needs the ``dask`` extra; see :mod:`dumpunet.store.dataset`).

        Examples
        --------
        >>> ds = store.to_xarray(blocks="OUT11")  # doctest: +SKIP
        >>> ds["OUT11"].mean(["y", "x"]).sel(guidance="cond", step=20).values  # doctest: +SKIP
        """
        from dumpunet.store.dataset import run_dataset

        return run_dataset(self, run, **options)

    def disk_bytes(self) -> int | None:
        """Bytes of every file of the store (a URL: of every object, from listings; None where it cannot list)."""
        if isinstance(self.path, StoreUrl):
            return total_bytes(self.root.store, self.path)
        total = 0
        for dirpath, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size  # a link's target is not the store's
                except OSError:
                    pass
        return total


def open_store(path: str | os.PathLike[str] | StoreUrl, *, storage_options: Mapping[str, Any] | None = None) -> Store:
    """Open a dumpunet store read-only: a local folder, or a URL (``s3://``, ``gs://``, ``https://``).

    ``storage_options`` reach a URL's backend, in fsspec's names (``endpoint_url``, ``anon``, ``key`` ...;
    translated for obstore, which opens s3:// and gs://);
    credentials otherwise come from the usual environment variables (docs/remote.md).

    Examples
    --------
    >>> store = dumpunet.open("girl.zarr")  # doctest: +SKIP
    >>> store.features("OUT11", step=20).shape  # doctest: +SKIP
    (320, 64, 64)
    >>> remote = dumpunet.open("s3://bucket/girl.zarr", storage_options={"anon": True})  # doctest: +SKIP
    """
    return Store(path, storage_options=storage_options)


"""What a render or an export reads: one run's blocks x steps x images x guidance halves x channels.

:func:`select` checks the whole selection against the store before anything is read or
written (unknown block, step not recorded or not completely written, image or channel out of
range), so a mistake fails at once with one readable error and leaves no files behind.
Each (block, step, image, guidance) is one :class:`Slab`: one ``[C, H, W]`` map of the store,
read as one chunk. Steps with several U-Net calls (Heun, DPM2, ...) contribute their first call,
as :meth:`dumpunet.store.Run.features` does by default.

Examples
--------
>>> sel = select(dumpunet.open("girl.zarr"), Pick(blocks="OUT11", steps="20"))  # doctest: +SKIP
>>> [s.name for s in sel.slabs()]  # doctest: +SKIP
['OUT11-step020-img0-cond']

:func:`select_pair` selects the same from both runs of a pair (``record --pair``, ``sweep``) and
returns a :class:`DiffSelection`, whose :meth:`~DiffSelection.read` gives ``layered - base``:
anything that renders a :class:`Selection` renders difference maps unchanged. :func:`select_stores`
does the same for a run of each of two stores (``dumpunet view a.zarr b.zarr``: A - B).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

import numpy as np
import zarr

from dumpunet.analyzer.pca import basis_key
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.reduce import difference
from dumpunet.errors import OptionError, SelectionError
from dumpunet.specs import format_ints, parse_ints
from dumpunet.store import Run, Store, schema
from dumpunet.store.readahead import ChunkRef

__all__ = [
    "AttentionSelection", "DiffSelection", "DiffStats", "Selection", "Slab", "base_call", "channel_list", "check_halves",
    "check_layouts", "matching_run", "select", "select_attention", "select_pair", "select_stores",
]

@dataclass(frozen=True)
class Slab:
    """One block's map at one step, for one image and one guidance half."""

    block: str
    which: str
    step: int
    call: int
    timestep: float
    image: int
    guidance: str
    guidance_index: int

    @property
    def name(self) -> str:
        """``OUT11-step020-img0-cond``; ``OUT11-input-step020-...`` for block inputs."""
        part = f"{self.block}-input" if self.which == "input" else self.block
        return f"{part}-step{self.step:03d}-img{self.image}-{self.guidance}"

    def params(self) -> dict[str, object]:
        return {
            "block": self.block,
            "which": self.which,
            "step": self.step,
            "call": self.call,
            "timestep": self.timestep,
            "image": self.image,
            "guidance": self.guidance,
        }


@dataclass
class Selection:
    """A checked selection of one run; :meth:`read` returns the selected channels of a slab."""

    store: Store
    run: Run
    which: str
    blocks: list[str]
    steps: list[int]
    calls: dict[int, int]
    images: list[int]
    guidance: list[tuple[str, int]]
    channels: dict[str, list[int] | None]  # None: every channel
    arrays: dict[str, zarr.Array]
    prefix: ClassVar[str] = ""
    """How the names of this selection's files start (``diff-`` for differences)."""

    @property
    def label(self) -> str:
        """The store's folder name without ``.zarr``: a run's name among several stores."""
        return store_label(self.store)

    def shape(self, block: str) -> tuple[int, int, int]:
        """``(C, H, W)`` of the selected channels of a block."""
        c, h, w = schema.BLOCK_OUTPUT.slab_shape(self.arrays[block].shape)
        chosen = self.channels[block]
        return (c if chosen is None else len(chosen), h, w)

    def channel_text(self, block: str) -> str:
        chosen = self.channels[block]
        return format_ints(chosen if chosen is not None else range(self.shape(block)[0]))

    def slabs(self, order: Literal["step", "block"] = "step") -> Iterator[Slab]:
        """Every slab, by step then block (or by block then step), then image, then guidance."""
        pairs = (
            [(s, b) for s in self.steps for b in self.blocks]
            if order == "step"
            else [(s, b) for b in self.blocks for s in self.steps]
        )
        timesteps = self.run.calls.timestep
        for step, block in pairs:
            k = self.calls[step]
            for image in self.images:
                for label, g in self.guidance:
                    yield Slab(block, self.which, step, k, float(timesteps[k]), image, label, g)

    def read(self, slab: Slab) -> np.ndarray:
        """The selected channels ``[C, H, W]`` of one slab, in the stored dtype (reads one chunk)."""
        x = self.run.read_slab(self.arrays[slab.block], slab.call, slab.image, slab.guidance_index)
        chosen = self.channels[slab.block]
        return x if chosen is None else x[chosen]

    def chunks(self, slab: Slab) -> list[ChunkRef]:
        """The chunks :meth:`read` reads for ``slab`` (:func:`~dumpunet.store.readahead.read_ahead` fetches them early)."""
        return [self.run.slab_chunk(self.arrays[slab.block], slab.call, slab.image, slab.guidance_index)]

    def file_stem(self, slab: Slab) -> str:
        """How a file showing ``slab`` starts: ``OUT11-step020-img0-cond``."""
        return self.prefix + slab.name

    def describe(self) -> dict[str, Any]:
        """The manifest fields every file of this selection shares."""
        return {"kind": "render", "store": str(self.store.path.resolve()), "run": self.run.name}

    def basis_key(self, block: str) -> str:
        """The PCA basis entry that colours ``block`` (see :func:`dumpunet.analyzer.pca.basis_key`)."""
        return basis_key(block, self.which)

    def __len__(self) -> int:
        return len(self.blocks) * len(self.steps) * len(self.images) * len(self.guidance)


@dataclass(frozen=True)
class DiffStats:
    """How much one slab changed: means over its selected channels and pixels, in float64.

    ``mean_abs_diff`` is ``mean(|layered - base|)`` of the float32 difference,
    ``base_mean_abs`` is ``mean(|base|)``, and ``relative`` their ratio; where the base is all
    zero, ``relative`` is 0 if nothing changed and ``inf`` otherwise.
    """

    mean_abs_diff: float
    base_mean_abs: float

    @property
    def relative(self) -> float:
        if self.base_mean_abs == 0:
            return 0.0 if self.mean_abs_diff == 0 else math.inf
        return self.mean_abs_diff / self.base_mean_abs


@dataclass
class DiffSelection(Selection):
    """A selection of the layered run of a pair whose :meth:`read` returns ``layered - base``.

    ``run``/``arrays``/``calls`` are the layered run's (slabs carry its call indices), the
    ``base_*`` fields the base run's. Files are named ``diff-<slab>`` and described with
    ``kind: "diff"``, so they can share a folder with renders of the same store.
    """

    base: Run
    base_arrays: dict[str, zarr.Array]
    base_calls: dict[int, int]
    pair: dict[str, str]
    _stats: dict[tuple[str, int, int, str], DiffStats] = field(default_factory=dict, repr=False)
    prefix: ClassVar[str] = "diff-"

    def read_base(self, slab: Slab) -> np.ndarray:
        """The selected channels of the base run at the slab's block, step, image and half."""
        x = self.base.read_slab(self.base_arrays[slab.block], self.base_calls[slab.step], slab.image, slab.guidance_index)
        chosen = self.channels[slab.block]
        return x if chosen is None else x[chosen]

    def chunks(self, slab: Slab) -> list[ChunkRef]:
        """The base run's chunk, then the layered run's."""
        base = self.base.slab_chunk(self.base_arrays[slab.block], self.base_calls[slab.step], slab.image, slab.guidance_index)
        return [base, *super().chunks(slab)]

    def read(self, slab: Slab) -> np.ndarray:
        """``layered - base`` of the selected channels, float32 ``[C, H, W]`` (reads two chunks).

        The first read of a slab also notes its :class:`DiffStats`, so a render's own reads
        fill the summary without a second pass over the store.
        """
        base = self.read_base(slab)
        d = difference(super().read(slab), base)
        key = (slab.block, slab.step, slab.image, slab.guidance)
        if key not in self._stats:
            self._stats[key] = DiffStats(float(np.abs(d).mean(dtype=np.float64)), float(np.abs(base).mean(dtype=np.float64)))
        return d

    def stats(self, slab: Slab) -> DiffStats:
        """How much the slab changed (reads it if no render has yet)."""
        key = (slab.block, slab.step, slab.image, slab.guidance)
        if key not in self._stats:
            self.read(slab)
        return self._stats[key]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "diff",
            "store": str(self.store.path.resolve()),
            "run": self.run.name,
            "base_run": self.base.name,
            "pair": self.pair["label"],
        }

    def basis_key(self, block: str) -> str:
        """Differences get their own PCA basis entries (``OUT11-diff``): they centre on 0, features do not."""
        return f"{basis_key(block, self.which)}-diff"


def select(store: Store, pick: Pick) -> Selection:
    """Check a pick against a store and return its selection; raise a readable error if it is not there.

    Empty specs select everything: every recorded block, every complete step, every image and
    channel. ``guidance="both"`` selects every recorded half, in the store's order.
    """
    which, guidance, channels = pick.which, pick.guidance, pick.channels
    r = store.run(pick.run)
    block_list = store.select_blocks(pick.blocks, run=r.name, which=which)
    if not block_list:
        raise SelectionError(f"run {r.name!r} of {store.path} has no recorded block {which}s")
    arrays = {b: r.array(b, which) for b in block_list}

    step_list = store.select_steps(pick.steps, run=r.name)
    if not step_list:
        raise SelectionError(f"run {r.name!r} of {store.path} has no completely written step")
    calls = {s: r.calls.index(s, 0) for s in step_list}
    for b, arr in arrays.items():
        late = [s for s, k in calls.items() if k >= arr.shape[0]]
        if late:
            raise SelectionError(f"step {late[0]} of block {b} was not written")

    n_images = min(int(a.shape[1]) for a in arrays.values())
    image_list = parse_ints(pick.images, 0, n_images - 1, noun="image", what="image spec")
    if guidance == "both":
        halves = [(label, k) for k, label in enumerate(r.guidance_labels)]
    else:
        halves = [(guidance, r.guidance_index(guidance))]

    chosen = {b: channel_list(channels, int(arr.shape[3]), b) for b, arr in arrays.items()}
    return Selection(store, r, which, block_list, step_list, calls, image_list, halves, chosen, arrays)


def channel_list(channels: str, n: int, block: str) -> list[int] | None:
    """The channels a spec selects of a block's ``n``; None: every channel (an empty spec, or all ``n``).

    >>> channel_list("3, 0-1", 4, "OUT11"), channel_list("0-3", 4, "OUT11")
    ([0, 1, 3], None)
    """
    if not channels.strip():
        return None
    picked = parse_ints(channels, 0, n - 1, noun="channel", what=f"channel spec for {block}")
    return None if picked == list(range(n)) else picked


def select_pair(store: Store, pick: Pick, *, pair: str | None = None) -> DiffSelection:
    """Select from both runs of a pair (default: the only or first pair) for difference maps.

    The selection is checked against the layered run as :func:`select` does; the base run must
    then hold the same blocks, with the same ``[image, guidance, channel, y, x]`` shapes, the
    same guidance halves and every selected step, or a readable error says what differs.

    Examples
    --------
    >>> sel = select_pair(dumpunet.open("sweep.zarr"), Pick(blocks="OUT11", steps="20"), pair="IN04")  # doctest: +SKIP
    >>> sel.read(next(sel.slabs())).dtype  # doctest: +SKIP
    dtype('float32')
    """
    if pick.run is not None:
        raise OptionError("diff reads the two runs of a pair: choose it with pair=..., not run=...")
    base, layered = store.pair(pair)
    label = next(p.label for p in store.pairs if (p.base, p.layered) == (base.name, layered.name))
    sel = select(store, replace(pick, run=layered.name))
    return _against(sel, base, {"base": base.name, "layered": layered.name, "label": label},
                    repr(base.name), repr(layered.name), f"of pair {label!r}")


def select_stores(store: Store, pick: Pick, base_store: Store, *, base_run: str | None = None) -> DiffSelection:
    """Select the same from a run of each of two stores: reads give ``store - base_store``.

    ``pick.run`` names the run of ``store``; ``base_run`` that of ``base_store`` (default: its run
    of the same name, or its default run). Both stores must share the U-Net layout (the same blocks with the same
    shapes), and the two runs are checked as :func:`select_pair` checks a pair's.

    Examples
    --------
    >>> a, b = dumpunet.open("a.zarr"), dumpunet.open("b.zarr")  # doctest: +SKIP
    >>> sel = select_stores(a, Pick(blocks="OUT11", steps="20"), b)  # doctest: +SKIP
    """
    sel = select(store, pick)
    check_layouts(store, base_store)
    base = base_store.run(base_run) if base_run is not None else matching_run(base_store, sel.run.name)
    name, base_name = store.path.name, base_store.path.name
    label = f"{name}:{sel.run.name} - {base_name}:{base.name}"
    return _against(sel, base, {"base": base.name, "layered": sel.run.name, "label": label},
                    f"{base.name!r} of {base_name}", f"{sel.run.name!r} of {name}", "")


def check_layouts(store: Store, base_store: Store) -> None:
    """Refuse two stores whose U-Net layouts differ (other blocks, or a block of another shape)."""
    name, base_name = store.path.name, base_store.path.name
    layout = [(b.name, b.output_shape) for b in store.block_table]
    base_layout = [(b.name, b.output_shape) for b in base_store.block_table]
    if layout != base_layout:
        if [b for b, _ in layout] != [b for b, _ in base_layout]:
            what = f"{len(layout)} blocks ({layout[0][0]}-{layout[-1][0]}) against {len(base_layout)}"
        else:
            b, x, y = next((b, x, y) for (b, x), (_, y) in zip(layout, base_layout) if x != y)
            what = f"block {b} is {'x'.join(map(str, x))} in {name} but {'x'.join(map(str, y))} in {base_name}"
        raise SelectionError(f"{name} and {base_name} have different U-Net layouts: {what}; "
                             "a difference needs two recordings of one model at one size")


def check_halves(base: Run, layered: Run, runs: str, base_desc: str, desc: str) -> None:
    """Refuse two runs with different guidance halves (``runs`` names both in the message)."""
    if base.guidance_labels != layered.guidance_labels:
        raise SelectionError(
            f"{runs} differ: guidance halves "
            f"{', '.join(base.guidance_labels)} in {base_desc} but {', '.join(layered.guidance_labels)} in {desc}"
        )


def base_call(base: Run, step: int, base_desc: str) -> int:
    """The call of ``step`` in the base run; its error names the base run."""
    try:
        return base.calls.index(step, 0)
    except SelectionError as exc:  # IncompleteStepError too
        raise type(exc)(f"base run {base_desc}: {exc}") from None


def matching_run(store: Store, name: str) -> Run:
    """The run of ``store`` named ``name``, or its default run: what another store's run is compared with."""
    return store.run(name if name in store.run_names else None)


def _against(sel: Selection, base: Run, pair: dict[str, str], base_desc: str, desc: str, of: str) -> DiffSelection:
    """``sel`` as a :class:`DiffSelection` against run ``base``, checked to hold the same blocks, halves and steps."""
    layered, which = sel.run, sel.which
    runs = f"runs {base_desc} and {desc}" + (f" {of}" if of else "")
    check_halves(base, layered, runs, base_desc, desc)
    base_arrays: dict[str, zarr.Array] = {}
    for b in sel.blocks:
        try:
            arr = base.array(b, which)
        except SelectionError:
            raise SelectionError(
                f"block {b} has recorded {which}s in run {desc} but not in base run {base_desc} "
                f"(recorded there: {', '.join(base.recorded(which)) or 'none'})"
            ) from None
        if arr.shape[1:] != sel.arrays[b].shape[1:]:
            def dims(a: zarr.Array) -> str:
                return "x".join(str(n) for n in a.shape[1:])

            raise SelectionError(
                f"{runs} differ: block {b} is {dims(arr)} in {base_desc} but {dims(sel.arrays[b])} in {desc} "
                "([image, guidance, channel, y, x])"
            )
        base_arrays[b] = arr
    base_calls: dict[int, int] = {}
    for s in sel.steps:
        base_calls[s] = base_call(base, s, base_desc)
        late = [b for b, arr in base_arrays.items() if base_calls[s] >= arr.shape[0]]
        if late:
            raise SelectionError(f"base run {base_desc}: step {s} of block {late[0]} was not written")
    fields_ = {f.name: getattr(sel, f.name) for f in fields(Selection)}
    return DiffSelection(**fields_, base=base, base_arrays=base_arrays, base_calls=base_calls, pair=pair)


@dataclass(frozen=True)
class AttentionSelection:
    """A checked selection of one run's attention layers x steps x images x guidance halves."""

    run: Run
    layers: list[str]
    steps: list[int]
    images: list[int]
    halves: list[str]

    def items(self) -> Iterator[tuple[int, str, int, str]]:
        """Every ``(step, layer, image, guidance)``: by step, then layer, image, guidance half."""
        for step in self.steps:
            for layer in self.layers:
                for image in self.images:
                    for g in self.halves:
                        yield step, layer, image, g


def store_label(store: Store) -> str:
    """A store's folder name without ``.zarr``, as picture titles name it."""
    name = store.path.resolve().name
    return name[: -len(".zarr")] if name.endswith(".zarr") and len(name) > 5 else name


def select_attention(store: Store, pick: Pick, command: str) -> AttentionSelection:
    """Check a pick of attention layers (``pick.blocks`` names layers or blocks) against a store.

    ``channels`` and ``which`` do not apply to attention and are refused by ``command``'s name.
    """
    pick.refuse(command, "channels", "which")
    r = store.run(pick.run)
    layers = store.select_layers(pick.blocks, run=r.name)
    if not layers:
        raise SelectionError(f"no recorded attention layer matches {pick.blocks!r}")
    steps = store.select_steps(pick.steps, run=r.name)
    images = parse_ints(pick.images, 0, r.n_images - 1, noun="image", what="image spec")
    halves = list(pick.halves or r.guidance_labels)
    for g in halves:
        r.guidance_index(g)
    return AttentionSelection(r, layers, steps, images, halves)

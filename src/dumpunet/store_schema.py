"""The on-disk contract between the recorder and the analyzer.

This is the only module that spells array paths, dimension names, dtypes, chunk shapes and
codecs. Writers and readers ask it for paths (:func:`path`), create arrays through
:func:`create_array` and open them through :func:`open_array`; ``docs/store-format.md``
describes the same layout for people who open stores without dumpunet.

Layout (``{run}`` is ``main`` for a plain recording, ``base``/``layered`` for a pair)::

    /                                   attrs: dumpunet header, model, blocks, runs
    runs/{run}/                         attrs: the generation parameters of that run
    runs/{run}/call_step                int32  [call]        sampler step (1-based)
    runs/{run}/call_substep             int32  [call]        U-Net call within the step
    runs/{run}/call_timestep            float32[call]        scheduler timestep
    runs/{run}/call_done                uint8  [call]        1 once every array of the call is written
    runs/{run}/images                   uint8  [image, pixel_y, pixel_x, rgb]
    runs/{run}/latents                  float32[image, latent_channel, latent_y, latent_x]
    runs/{run}/blocks/{block}/output    f16/f32[call, image, guidance, channel, y, x]
    runs/{run}/blocks/{block}/input     f16/f32[call, image, guidance, in_channel, in_y, in_x]
    runs/{run}/attention/{layer}/{feature}   see ATTENTION_FEATURES
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from dumpunet.errors import StoreError, StoreNotFoundError
from dumpunet.specs import parse_ints

FORMAT_VERSION = 1
"""Major version: a reader refuses a store whose major version is newer than this."""
FORMAT_MINOR = 0
"""Minor version: additions that older readers can ignore."""
STORE_KIND = "dumpunet-store"
HEADER_KEY = "dumpunet"

GUIDANCE_LABELS: tuple[str, ...] = ("uncond", "cond")
"""Order of the guidance axis when classifier-free guidance is on (diffusers batches uncond first)."""

RECORD_DTYPES = {"fp16": "float16", "fp32": "float32"}

Guidance = Literal["uncond", "cond"]


@dataclass(frozen=True)
class ArrayKind:
    """One kind of array in the store: where it lives, its dims, dtype and chunking rule."""

    key: str
    template: str
    dims: tuple[str, ...]
    dtype: str | None  # None: chosen per recording (RECORD_DTYPES)
    description: str
    chunk_rule: Literal["slab", "per_image", "calls"]

    def path(self, **names: str) -> str:
        return self.template.format(**names)

    def chunks(self, shape: Sequence[int]) -> tuple[int, ...]:
        """One chunk per (call, image, guidance) slab, per image, or 64 calls of a 1-D table."""
        if self.chunk_rule == "slab":
            return (1, 1, 1, *shape[3:])
        if self.chunk_rule == "per_image":
            return (1, *shape[1:])
        return (CALL_CHUNK,)


CALL_CHUNK = 64

STEPS_ATTR = "recorded_steps"
"""Array attribute: the steps (spec grammar) an array holds when it is recorded at fewer steps than
the run (self-attention with a step filter). Other calls of such an array are never written."""

CALL_STEP = ArrayKind("call_step", "runs/{run}/call_step", ("call",), "int32", "sampler step of each recorded U-Net call, 1-based", "calls")
CALL_SUBSTEP = ArrayKind(
    "call_substep",
    "runs/{run}/call_substep",
    ("call",),
    "int32",
    "index of the U-Net call within its sampler step (0 for one-call samplers; 0/1 for Heun, DPM2, ...)",
    "calls",
)
CALL_TIMESTEP = ArrayKind("call_timestep", "runs/{run}/call_timestep", ("call",), "float32", "scheduler timestep passed to the U-Net", "calls")
CALL_DONE = ArrayKind(
    "call_done",
    "runs/{run}/call_done",
    ("call",),
    "uint8",
    "1 once every array of the call is written; written last, so 0 marks an interrupted call",
    "calls",
)
CALL_ARRAYS = (CALL_STEP, CALL_SUBSTEP, CALL_TIMESTEP, CALL_DONE)

IMAGES = ArrayKind(
    "images", "runs/{run}/images", ("image", "pixel_y", "pixel_x", "rgb"), "uint8", "final decoded images", "per_image"
)
LATENTS = ArrayKind(
    "latents",
    "runs/{run}/latents",
    ("image", "latent_channel", "latent_y", "latent_x"),
    "float32",
    "final latents, before the VAE decodes them",
    "per_image",
)
BLOCK_OUTPUT = ArrayKind(
    "output",
    "runs/{run}/blocks/{block}/output",
    ("call", "image", "guidance", "channel", "y", "x"),
    None,
    "what the block returns",
    "slab",
)
BLOCK_INPUT = ArrayKind(
    "input",
    "runs/{run}/blocks/{block}/input",
    ("call", "image", "guidance", "in_channel", "in_y", "in_x"),
    None,
    "what the block's first module receives (OUT blocks: after the skip connection is concatenated)",
    "slab",
)
BLOCK_ARRAYS = {"output": BLOCK_OUTPUT, "input": BLOCK_INPUT}

ATTENTION_FEATURES: dict[str, ArrayKind] = {
    "qk": ArrayKind(
        "qk",
        "runs/{run}/attention/{layer}/qk",
        ("call", "image", "guidance", "head", "query", "token"),
        None,
        "softmax attention probabilities (rows sum to 1 over 'token')",
        "slab",
    ),
    "k": ArrayKind(
        "k",
        "runs/{run}/attention/{layer}/k",
        ("call", "image", "guidance", "head", "token", "head_dim"),
        None,
        "projected keys, split into heads",
        "slab",
    ),
    "vqk": ArrayKind(
        "vqk",
        "runs/{run}/attention/{layer}/vqk",
        ("call", "image", "guidance", "head", "query", "head_dim"),
        None,
        "per-head attention output before the output projection",
        "slab",
    ),
}


def codecs_for(kind: ArrayKind) -> dict[str, Any]:
    """Compressor settings of an array kind (see docs/benchmarks.md for the measurement)."""
    if kind.chunk_rule == "slab":
        # fp16 activations compress ~1.08x with zstd-1 but halve the write speed (blosc-lz4: 1.01x,
        # still -30%); the writer sets the recording speed, so activations are stored uncompressed.
        return {"compressors": None}
    if kind.chunk_rule == "calls":
        return {"compressors": None}  # a few bytes per call, rewritten on every call by the writer
    return {"compressors": ZstdCodec(level=3)}


CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
"""Flat chunk keys (``c.<call>.<image>.<guidance>.0.0.0``): with ``/`` every chunk file of a slab
array needs about four new directories, which cost as much as the file (docs/benchmarks.md)."""


GROUP_DOCUMENT = {"attributes": {}, "zarr_format": 3, "node_type": "group"}
"""The zarr.json of a group without attributes."""

_TEMPLATES: dict[tuple[str, str, str, str], str] = {}


def array_document(
    kind: ArrayKind, shape: Sequence[int], *, dtype: str | None = None, attributes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The zarr.json document of one array, exactly as :func:`create_array` would write it.

    The store writer creates and grows its per-call arrays by writing these documents itself
    (zarr's own array creation costs ~6 ms of CPU per array, which a recording cannot spare).
    The document comes from a template that zarr builds once per kind, dtype and codec choice.
    """
    dt = kind.dtype or dtype
    if dt is None:
        raise ValueError(f"{kind.key} needs a dtype")
    key = (kind.key, dt, repr(codecs_for(kind)), repr(CHUNK_KEY_ENCODING))
    if key not in _TEMPLATES:
        from zarr.core.buffer import default_buffer_prototype

        root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
        probe = (0,) + (1,) * (len(kind.dims) - 1)
        arr = create_array(root, kind, probe, dtype=dt, run="r", block="b", layer="l")
        _TEMPLATES[key] = arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes().decode()
    doc = json.loads(_TEMPLATES[key])
    doc["shape"] = [int(n) for n in shape]
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [int(n) for n in kind.chunks(shape)]
    doc["attributes"] = {"description": kind.description, **(attributes or {})}
    return doc


def path(kind: ArrayKind, **names: str) -> str:
    """Return the store path of one array, e.g. ``path(BLOCK_OUTPUT, run="main", block="IN01")``."""
    return kind.path(**names)


def create_array(
    root: zarr.Group,
    kind: ArrayKind,
    shape: Sequence[int],
    *,
    dtype: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    **names: str,
) -> zarr.Array:
    """Create one array of ``kind`` under ``root`` with the schema's dims, chunks and codecs."""
    dt = kind.dtype or dtype
    if dt is None:
        raise ValueError(f"{kind.key} needs a dtype")
    attrs = {"description": kind.description, **(attributes or {})}
    return root.create_array(
        kind.path(**names),
        shape=tuple(shape),
        chunks=kind.chunks(shape),
        dtype=dt,
        fill_value=0,
        dimension_names=list(kind.dims),
        chunk_key_encoding=CHUNK_KEY_ENCODING,
        attributes=attrs,
        # An all-zero slab is still a recorded slab: write it, so "chunk missing" means "not written".
        config={"write_empty_chunks": True},
        **codecs_for(kind),
    )


def open_array(root: zarr.Group, kind: ArrayKind, **names: str) -> zarr.Array:
    """Open one array of ``kind``; a missing one raises KeyError."""
    node = root[kind.path(**names)]
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{kind.path(**names)} is not an array")
    return node


def run_group_path(run: str) -> str:
    return f"runs/{run}"


def blocks_group_path(run: str) -> str:
    return f"runs/{run}/blocks"


def attention_group_path(run: str) -> str:
    return f"runs/{run}/attention"


# --------------------------------------------------------------------------- header


def header(*, writer: str, created: str) -> dict[str, Any]:
    """The ``dumpunet`` attribute of the root group that marks a directory as a dumpunet store."""
    return {
        "kind": STORE_KIND,
        "format_version": FORMAT_VERSION,
        "format_minor": FORMAT_MINOR,
        "writer": writer,
        "created": created,
    }


def check_header(attrs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Return the header of a root group's attributes, refusing foreign and newer stores."""
    head = attrs.get(HEADER_KEY)
    if not isinstance(head, Mapping) or head.get("kind") != STORE_KIND:
        raise StoreError(f"{where} is a zarr store but not a dumpunet store (no '{HEADER_KEY}' header)")
    version = head.get("format_version")
    if not isinstance(version, int):
        raise StoreError(f"{where}: the dumpunet header has no integer format_version")
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{where} has store format version {version}, newer than this dumpunet reads "
            f"(version {FORMAT_VERSION}); upgrade dumpunet to open it"
        )
    return dict(head)


def open_root(where: str | Path, *, mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """Open the root group of a store after checking that it is a dumpunet store."""
    p = Path(where)
    if not p.exists():
        raise StoreNotFoundError(f"no store at {p}")
    if not p.is_dir():
        raise StoreError(f"{p} is a file, not a store directory")
    meta = p / "zarr.json"
    if not meta.is_file():
        raise StoreError(f"{p} is not a zarr v3 store (no zarr.json), so not a dumpunet store")
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{p}/zarr.json cannot be read: {exc}") from None
    if doc.get("node_type") != "group":
        raise StoreError(f"{p} is a zarr array, not a dumpunet store")
    check_header(doc.get("attributes", {}), str(p))
    return zarr.open_group(str(p), mode=mode, zarr_format=3)


# --------------------------------------------------------------------------- block table


@dataclass(frozen=True)
class BlockInfo:
    """One row of the block table (root attribute ``blocks``)."""

    name: str
    module: str  # diffusers module whose output is the block output
    modules: tuple[str, ...]  # every module of the unit, in call order
    input_module: str  # module whose input is the block input
    output_shape: tuple[int, int, int]  # channel, y, x at the recorded size
    input_shape: tuple[int, int, int]
    cross_attention: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "modules": list(self.modules),
            "input_module": self.input_module,
            "output_shape": list(self.output_shape),
            "input_shape": list(self.input_shape),
            "cross_attention": self.cross_attention,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BlockInfo:
        return cls(
            name=d["name"],
            module=d["module"],
            modules=tuple(d["modules"]),
            input_module=d["input_module"],
            output_shape=tuple(d["output_shape"]),  # type: ignore[arg-type]
            input_shape=tuple(d["input_shape"]),  # type: ignore[arg-type]
            cross_attention=bool(d["cross_attention"]),
        )


def block_aliases(blocks: Sequence[BlockInfo]) -> dict[str, str]:
    """Module path -> block name, for every module of every block (see specs.resolve_block)."""
    out: dict[str, str] = {}
    for b in blocks:
        for m in (b.module, b.input_module, *b.modules):
            out.setdefault(m, b.name)
    return out


# --------------------------------------------------------------------------- sizes


def block_shape(kind: ArrayKind, n_calls: int, n_images: int, n_guidance: int, chw: Sequence[int]) -> tuple[int, ...]:
    return (n_calls, n_images, n_guidance, *chw)


def nbytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


# --------------------------------------------------------------------------- validation


@dataclass
class Report:
    """What :func:`validate` found: ``problems`` make a store unsound, ``notes`` do not."""

    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _kind_of(array_path: str) -> ArrayKind | None:
    leaf = array_path.rsplit("/", 1)[-1]
    if "/blocks/" in array_path:
        return BLOCK_ARRAYS.get(leaf)
    if "/attention/" in array_path:
        return ATTENTION_FEATURES.get(leaf)
    for kind in (*CALL_ARRAYS, IMAGES, LATENTS):
        if kind.key == leaf:
            return kind
    return None


def validate(where: str | Path) -> Report:
    """Check a store against this schema; raise StoreError if it is not a dumpunet store at all.

    Checks every array's dims, dtype and shape against the schema and the block table, the
    call table's consistency, and that every chunk of every completed call exists on disk.
    An interrupted run is sound (a note), a missing chunk of a completed call is not (a problem).
    """
    root = open_root(where)
    base = Path(where)
    attrs = dict(root.attrs)
    problems: list[str] = []
    notes: list[str] = []
    try:
        blocks = {b["name"]: BlockInfo.from_json(b) for b in attrs.get("blocks", [])}
    except (KeyError, TypeError, ValueError) as exc:
        return Report([f"block table unreadable: {exc!r}"], notes)
    runs = attrs.get("runs", [])
    if not isinstance(runs, list):
        return Report(["root attribute 'runs' is not a list"], notes)
    if not runs:
        notes.append("no run recorded yet (stopped before the first U-Net call)")
    for run in runs:
        try:
            grp = root[run_group_path(run)]
        except KeyError:
            problems.append(f"run {run!r} is listed but its group is missing")
            continue
        run_attrs = dict(grp.attrs)
        lengths = {}
        calls = {}
        for kind in CALL_ARRAYS:
            try:
                arr = open_array(root, kind, run=run)
            except KeyError:
                problems.append(f"{kind.path(run=run)} is missing")
                continue
            lengths[kind.key] = arr.shape[0]
            calls[kind.key] = arr[...]
        if len(calls) != len(CALL_ARRAYS):
            continue
        n = min(lengths.values())
        if max(lengths.values()) - n > 1:
            problems.append(f"run {run}: call tables disagree in length {lengths}")
        done = calls["call_done"][:n] == 1
        done_idx = np.flatnonzero(done)
        if not done.all():
            notes.append(f"run {run}: {int((~done).sum())} U-Net call(s) not completely written (interrupted)")
        if not run_attrs.get("complete", False):
            reason = run_attrs.get("interrupted")
            notes.append(f"run {run}: recording did not finish" + (f" ({reason})" if reason else ""))
        else:
            try:
                img = open_array(root, IMAGES, run=run)
                if img.shape[0] != run_attrs.get("n_images", img.shape[0]):
                    problems.append(f"run {run}: {img.shape[0]} final images, expected {run_attrs.get('n_images')}")
            except KeyError:
                problems.append(f"run {run}: marked complete but has no final images")
        n_img = run_attrs.get("n_images")
        n_guid = len(run_attrs.get("guidance", []))
        for name, arr in sorted(_arrays_under(grp), key=lambda item: item[0]):
            full = f"{run_group_path(run)}/{name}"
            kind = _kind_of(full)
            if kind is None:
                problems.append(f"{full}: not an array of this schema")
                continue
            dims = tuple(arr.metadata.dimension_names or ())
            if dims != kind.dims:
                problems.append(f"{full}: dimension names {dims}, expected {kind.dims}")
            if kind.dtype is not None and str(arr.dtype) != kind.dtype:
                problems.append(f"{full}: dtype {arr.dtype}, expected {kind.dtype}")
            if kind.chunk_rule != "slab":
                continue
            if kind.dtype is None and str(arr.dtype) not in RECORD_DTYPES.values():
                problems.append(f"{full}: dtype {arr.dtype} is not one of {sorted(RECORD_DTYPES.values())}")
            if arr.shape[1:3] != (n_img, n_guid):
                problems.append(f"{full}: image/guidance axes {arr.shape[1:3]}, expected {(n_img, n_guid)}")
            if kind in BLOCK_ARRAYS.values():
                block = name.split("/")[1]
                info = blocks.get(block)
                if info is None:
                    problems.append(f"{full}: block {block} is not in the block table")
                else:
                    want = info.output_shape if kind.key == "output" else info.input_shape
                    if tuple(arr.shape[3:]) != tuple(want):
                        problems.append(f"{full}: shape {arr.shape[3:]}, block table says {tuple(want)}")
            if len(done_idx) and arr.shape[0] <= done_idx[-1]:
                problems.append(f"{full}: {arr.shape[0]} calls, but call {done_idx[-1]} is marked complete")
                continue
            missing = 0
            only = arr.attrs.get(STEPS_ATTR)
            wanted = done_idx
            if isinstance(only, str) and only:
                steps = set(parse_ints(only, 0, None, noun="step", what=f"{full} {STEPS_ATTR}"))
                wanted = [k for k in done_idx if int(calls["call_step"][k]) in steps]
            for k in wanted:
                for i in range(arr.shape[1]):
                    for g in range(arr.shape[2]):
                        key = arr.metadata.encode_chunk_key((int(k), i, g) + (0,) * (arr.ndim - 3))
                        if not (base / full / key).is_file():
                            missing += 1
            if missing:
                problems.append(f"{full}: {missing} chunk(s) of completed calls are missing")
    return Report(problems, notes)


def _arrays_under(grp: zarr.Group, prefix: str = "") -> list[tuple[str, zarr.Array]]:
    out: list[tuple[str, zarr.Array]] = []
    for name, node in grp.members():
        rel = f"{prefix}{name}"
        if isinstance(node, zarr.Array):
            out.append((rel, node))
        else:
            out.extend(_arrays_under(node, rel + "/"))
    return out

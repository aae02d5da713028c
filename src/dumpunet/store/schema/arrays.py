"""The on-disk contract between the recorder and the analyzer.

This is the only module that spells array paths, dimension names, dtypes, chunk shapes and
codecs. Writers and readers ask its array kinds for paths (:meth:`ArrayKind.path`), create arrays through
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zarr
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from dumpunet.errors import StoreError, StoreNotFoundError
from dumpunet.store.localfiles import StoreFiles, UnsafeFileError
from dumpunet.store.location import StoreUrl, locate, open_zarr_store, read_key, unfinished_copy_hint
from dumpunet.store.schema.attrs import HEADER_KEY, BlockInfo, Header

__all__ = ["ATTENTION_FEATURES", "ArrayKind", "BLOCK_ARRAYS", "BLOCK_INPUT", "BLOCK_OUTPUT", "BlockInfo", "CALL_ARRAYS", "CALL_CHUNK", "CALL_DONE", "CALL_STEP", "CALL_SUBSTEP", "CALL_TIMESTEP", "CHUNK_KEY_ENCODING", "FORMAT_MINOR", "FORMAT_VERSION", "GROUP_DOCUMENT", "HEADER_KEY", "Header", "IMAGES", "LATENTS", "RECORD_DTYPES", "RUNS_GROUP", "STEPS_ATTR", "array_document", "block_aliases", "blocks_group_path", "check_header", "codecs_for", "create_array", "header", "human_bytes", "node", "open_array", "open_root", "run_group_path"]

FORMAT_VERSION = 1
"""Major version: a reader refuses a store whose major version is newer than this."""
FORMAT_MINOR = 2
"""Minor version: additions that older readers can ignore (1: coordinate arrays, :mod:`.coords`; run attribute
``writer_wait_seconds``; 2: cross-attention arrays' ``heads`` and ``kept_tokens``, see ``LayerAttrs``)."""

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
    chunk_rule: Literal["slab", "per_image", "calls", "whole"]
    fill_value: Any = 0

    def path(self, **names: str) -> str:
        return self.template.format(**names)

    def axis(self, name: str) -> int:
        """Position of the named dimension, e.g. ``BLOCK_OUTPUT.axis("image") == 1``.

        Examples
        --------
        >>> BLOCK_OUTPUT.axis("channel"), ATTENTION_FEATURES["qk"].axis("token")
        (3, 5)
        """
        try:
            return self.dims.index(name)
        except ValueError:
            raise KeyError(f"{self.key} has no axis {name!r} (axes: {', '.join(self.dims)})") from None

    def slab_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """What one (call, image, guidance) slab of a slab array holds, e.g. ``(C, H, W)`` of a block.

        Examples
        --------
        >>> BLOCK_OUTPUT.slab_shape((20, 1, 2, 320, 64, 64))
        (320, 64, 64)
        """
        if self.chunk_rule != "slab":
            raise KeyError(f"{self.key} is not stored in slabs")
        return tuple(shape[self.axis("guidance") + 1 :])

    def chunks(self, shape: Sequence[int]) -> tuple[int, ...]:
        """One chunk per (call, image, guidance) slab, per image, or 64 calls of a 1-D table."""
        if self.chunk_rule == "slab":
            return (1, 1, 1, *self.slab_shape(shape))
        if self.chunk_rule == "per_image":
            return (1, *shape[1:])
        if self.chunk_rule == "whole":
            return tuple(max(1, int(n)) for n in shape)
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
    if kind.chunk_rule in ("calls", "whole"):
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
        arr = create_array(root, kind, probe, dtype=dt, run="r", block="b", layer="l", group="g")
        _TEMPLATES[key] = arr.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes().decode()
    doc = json.loads(_TEMPLATES[key])
    doc["shape"] = [int(n) for n in shape]
    doc["chunk_grid"]["configuration"]["chunk_shape"] = [int(n) for n in kind.chunks(shape)]
    doc["attributes"] = {"description": kind.description, **(attributes or {})}
    return doc


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
        fill_value=kind.fill_value,
        dimension_names=list(kind.dims),
        chunk_key_encoding=CHUNK_KEY_ENCODING,
        attributes=attrs,
        # An all-zero slab is still a recorded slab: write it, so "chunk missing" means "not written".
        config={"write_empty_chunks": True},
        **codecs_for(kind),
    )


def node(root: zarr.Group, path: str) -> zarr.Array | zarr.Group:
    """The array or group at ``path``; a missing one raises KeyError, unreadable metadata StoreError."""
    try:
        return root[path]
    except KeyError:
        if sync(root.store.exists(f"{root.path}/{path}/zarr.json".lstrip("/"))):  # there, but zarr found no node in it
            raise StoreError(f"{path}/zarr.json: metadata unreadable (not a zarr array or group document)") from None
        raise
    except UnsafeFileError:  # the unsafe key names its own path
        raise
    except StoreError as exc:
        raise StoreError(f"{path}: {exc}") from None
    except (ValueError, TypeError, AttributeError) as exc:  # zarr's parse errors of a zarr.json
        lines = str(exc).strip().splitlines()
        raise StoreError(f"{path}/zarr.json: metadata unreadable ({lines[0] if lines else type(exc).__name__})") from None


def open_array(root: zarr.Group, kind: ArrayKind, **names: str) -> zarr.Array:
    """Open one array of ``kind``; a missing one raises KeyError, a malformed one StoreError."""
    arr = node(root, kind.path(**names))
    if not isinstance(arr, zarr.Array):
        raise StoreError(f"{kind.path(**names)} is not an array")
    return arr


RUNS_GROUP = "runs"
"""The group that holds one group per run."""


def run_group_path(run: str) -> str:
    return f"{RUNS_GROUP}/{run}"


def blocks_group_path(run: str) -> str:
    return f"{run_group_path(run)}/blocks"


# --------------------------------------------------------------------------- header


def header(*, writer: str, created: str) -> Header:
    """The header of a new store, at this format version."""
    return Header(format_version=FORMAT_VERSION, format_minor=FORMAT_MINOR, writer=writer, created=created)


def check_header(attrs: Mapping[str, Any], where: str) -> Header:
    """Return the header of a root group's attributes, refusing foreign and newer stores."""
    head = Header.from_json(attrs.get(HEADER_KEY), where)
    if head.format_version > FORMAT_VERSION:
        raise StoreError(
            f"{where} has store format version {head.format_version}, newer than this dumpunet reads "
            f"(version {FORMAT_VERSION}); upgrade dumpunet to open it"
        )
    return head


def open_root(where: str | Path | StoreUrl, *, mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """Open the root group of a store (a folder or a URL) after checking that it is a dumpunet store."""
    p = locate(where)
    zstore = open_zarr_store(p, mode=mode)
    if isinstance(p, Path):
        try:
            raw = StoreFiles(p).read("zarr.json")
        except StoreError as exc:
            raise StoreError(f"{p}/{exc}") from None
        except OSError as exc:
            raise StoreError(f"{p}/zarr.json cannot be read: {exc}") from None
    else:
        raw = read_key(zstore, "zarr.json", p)
    if raw is None:
        if isinstance(p, StoreUrl):
            raise StoreNotFoundError(f"no store at {p} (no zarr.json there{unfinished_copy_hint(zstore)})")
        raise StoreError(f"{p} is not a zarr v3 store (no zarr.json{unfinished_copy_hint(zstore)}), so not a dumpunet store")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{p}/zarr.json cannot be read: {exc}") from None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        got = f"a JSON {type(doc).__name__}" if not isinstance(doc, dict) else f"node_type {doc.get('node_type')!r}"
        raise StoreError(f"{p}/zarr.json is not a zarr group document ({got}), so {p} is not a dumpunet store")
    attrs = doc.get("attributes", {})
    if not isinstance(attrs, dict):
        raise StoreError(f"{p}/zarr.json: attributes must be a JSON object, got {type(attrs).__name__}")
    check_header(attrs, str(p))
    # every later read (zarr's metadata reads included) goes through the same store: locally, regular
    # files below the root only
    return zarr.open_group(store=zstore, mode=mode, zarr_format=3)


# --------------------------------------------------------------------------- block table


def block_aliases(blocks: Sequence[BlockInfo]) -> dict[str, str]:
    """Module path -> block name, for every module of every block (see specs.resolve_block)."""
    out: dict[str, str] = {}
    for b in blocks:
        for m in (b.module, b.input_module, *b.modules):
            out.setdefault(m, b.name)
    return out


# --------------------------------------------------------------------------- sizes


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError

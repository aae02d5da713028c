"""Crafted and damaged stores: each kind of damage of issue 13, applied to a copy of a tiny-sd1 recording.

:func:`record_base` records the store every kind starts from (tiny-sd1, a pair of runs ``base``
and ``layered``, blocks IN01 and OUT11, cross-attention of both, 2 steps, cfg on). A
:class:`Damage` changes a copy of it (:func:`craft`) and says what must notice:

- ``needle``: text that ``validate``'s report and the error of every command in ``reads`` name
  (the array path or the attribute);
- ``reads``: the reading commands that touch the damaged part and so must exit 1 with one line;
  the others may succeed (they never read it) but never with a traceback or a hang.

The analysis commands read the default run (``layered``), steps 1-2, the cond half.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

L = "runs/layered"
BLK = f"{L}/blocks/IN01/output"
ATT = f"{L}/attention/IN01.attn2/qk"
CHUNK = "c.1.0.1.0.0.0"  # call 1 (step 2), image 0, cond
ATT_CHUNK = "c.1.0.1.0.0.0"

COMMANDS: dict[str, list[str]] = {
    "info": ["info", "{store}"],
    "render": ["render", "{store}", "--blocks", "IN01,OUT11", "--steps", "1-2", "--jobs", "1", "--quiet", "--out", "{out}"],
    "export": ["export", "{store}", "--blocks", "IN01,OUT11", "--steps", "1-2", "--format", "npy", "--quiet", "--out", "{out}"],
    "attention": ["attention", "{store}", "--layers", "IN01.attn2", "--steps", "1-2", "--quiet", "--out", "{out}"],
    "heatmap": ["heatmap", "{store}", "--word", "girl", "--out", "{out}"],
    "diff": ["diff", "{store}", "--blocks", "IN01,OUT11", "--steps", "1-2", "--jobs", "1", "--quiet", "--out", "{out}"],
    "sweep": ["render", "{store}", "--sweep", "--out", "{out}"],  # the contact sheet of every pair's final images
}
"""Every reading command, as the corpus runs it (``{store}``, ``{out}`` filled in)."""

ALL = frozenset(COMMANDS)
BLOCKS = frozenset({"render", "export", "diff"})
ATTENTION = frozenset({"attention", "heatmap"})
FINALS = frozenset({"heatmap", "diff", "sweep"})  # overlay on / place beside / lay out the final images
CALLS = ALL - {"sweep"}  # the contact sheet reads final images only, no call table
NONE: frozenset[str] = frozenset()


def record_base(path: Path) -> Path:
    """Record the base store of the corpus with the embedded tiny-sd1 model (needs torch)."""
    from dumpunet.cli import main

    args = ["record", "--model", "tiny-sd1", "--prompt", "a (~: IN00-OUT11: cute; M00: excellent :~) girl, pink hair",
            "--pair", "--sampling-steps", "2", "--width", "64", "--height", "64", "--seed", "1", "--blocks", "IN01,OUT11",
            "--attention", "qk", "--attention-blocks", "IN01,OUT11", "--out", str(path), "--quiet"]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return path


# --------------------------------------------------------------------------- edits


def _json(rel: str, edit: Callable[[Any], Any]) -> Callable[[Path], None]:
    """Replace the JSON document at ``rel`` by ``edit(doc)`` (or the doc ``edit`` changed in place)."""
    def apply(store: Path) -> None:
        p = store / rel
        doc = json.loads(p.read_text())
        out = edit(doc)
        p.write_text(json.dumps(doc if out is None else out))
    return apply


def _attrs(rel: str, edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """Edit the attributes of the node at ``rel`` in place (what ``edit`` returns is dropped)."""
    def in_place(doc: dict[str, Any]) -> None:
        edit(doc["attributes"])
    return _json(f"{rel}/zarr.json" if rel else "zarr.json", in_place)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda a: a.__setitem__(key, value)


def _bytes(rel: str, make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        p = store / rel
        p.write_bytes(make(p.read_bytes()))
    return apply


def _delete(rel: str) -> Callable[[Path], None]:
    return lambda store: os.remove(store / rel)


def _replace(rel: str, make: Callable[[Path, Path], None]) -> Callable[[Path], None]:
    """Remove ``rel`` and put ``make(path, outside)`` in its place; ``outside`` is a folder beside the store."""
    def apply(store: Path) -> None:
        p = store / rel
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else os.remove(p)
        outside = store.parent / "outside"
        outside.mkdir(exist_ok=True)
        make(p, outside)
    return apply


def _link_to_outside_copy(p: Path, outside: Path) -> None:
    """A link to a file of exactly the chunk's size outside the store (its bytes would pass a size check)."""
    target = outside / "secret.bin"
    target.write_bytes(b"\x01" * 1024)
    os.symlink(target, p)


def _fifo(p: Path, _outside: Path) -> None:
    os.mkfifo(p)


def _outside_fifo(p: Path, outside: Path) -> None:
    os.mkfifo(outside / "pipe")
    os.symlink(outside / "pipe", p)


def _device(p: Path, _outside: Path) -> None:
    import pytest

    try:
        os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pytest.skip("making a device node needs root")


def _shape(rel: str, shape: list[int], chunks: list[int] | None = None) -> Callable[[Path], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["shape"] = shape
        if chunks is not None:
            doc["chunk_grid"]["configuration"]["chunk_shape"] = chunks
    return _json(f"{rel}/zarr.json", edit)


@dataclass(frozen=True)
class Damage:
    """One kind of damage: a name, how to apply it to a copy of the base store, who must notice."""

    name: str
    apply: Callable[[Path], None]
    needle: str
    reads: frozenset[str]


def _move_block_dir_outside(store: Path) -> None:
    p = store / f"{L}/blocks/IN01"
    outside = store.parent / "outside"
    outside.mkdir(exist_ok=True)
    shutil.move(p, outside / "IN01")
    os.symlink(outside / "IN01", p)


def _link_inside(store: Path) -> None:
    p = store / BLK / CHUNK
    os.remove(p)
    os.symlink(store / BLK / "c.0.0.1.0.0.0", p)  # same size, inside the store: still not followed


KINDS: list[Damage] = [
    # --- chunk files of block arrays
    Damage("chunk-truncated", _bytes(f"{BLK}/{CHUNK}", lambda b: b[:50]), BLK, BLOCKS),
    Damage("chunk-empty", _bytes(f"{BLK}/{CHUNK}", lambda b: b""), BLK, BLOCKS),
    Damage("chunk-too-long", _bytes(f"{BLK}/{CHUNK}", lambda b: b + b"\0\0"), BLK, BLOCKS),
    Damage("chunk-deleted", _delete(f"{BLK}/{CHUNK}"), BLK, BLOCKS),
    Damage("chunk-link-to-outside-file-of-chunk-size", _replace(f"{BLK}/{CHUNK}", _link_to_outside_copy), BLK, BLOCKS),
    Damage("chunk-link-to-etc-passwd", _replace(f"{BLK}/{CHUNK}", lambda p, o: os.symlink("/etc/passwd", p)), BLK, BLOCKS),
    Damage("chunk-link-to-dev-zero", _replace(f"{BLK}/{CHUNK}", lambda p, o: os.symlink("/dev/zero", p)), BLK, BLOCKS),
    Damage("chunk-link-to-outside-fifo", _replace(f"{BLK}/{CHUNK}", _outside_fifo), BLK, BLOCKS),
    Damage("chunk-link-to-outside-folder", _replace(f"{BLK}/{CHUNK}", lambda p, o: os.symlink(o, p)), BLK, BLOCKS),
    Damage("chunk-link-inside-store", _link_inside, BLK, BLOCKS),
    Damage("chunk-fifo", _replace(f"{BLK}/{CHUNK}", _fifo), BLK, BLOCKS),
    Damage("chunk-folder", _replace(f"{BLK}/{CHUNK}", lambda p, o: p.mkdir()), BLK, BLOCKS),
    Damage("chunk-device", _replace(f"{BLK}/{CHUNK}", _device), BLK, BLOCKS),
    Damage("block-folder-link-to-outside", _move_block_dir_outside, f"{L}/blocks/IN01", BLOCKS | {"info"}),
    Damage("stray-link-in-array", lambda s: os.symlink("/etc/passwd", s / BLK / "c.9.0.0.0.0.0"),
           f"{BLK}/c.9.0.0.0.0.0", NONE),
    # --- block array metadata
    Damage("block-zarr-json-truncated", _bytes(f"{BLK}/zarr.json", lambda b: b[:40]), BLK, BLOCKS | {"info"}),
    Damage("block-zarr-json-list", _json(f"{BLK}/zarr.json", lambda d: [d]), BLK, BLOCKS | {"info"}),
    Damage("block-huge-channels", _shape(BLK, [2, 1, 2, 10**6, 8, 8], [1, 1, 1, 10**6, 8, 8]), BLK, BLOCKS),
    Damage("block-huge-chunk", _shape(BLK, [2, 1, 2, 8, 10**6, 10**6], [1, 1, 1, 8, 10**6, 10**6]), BLK, BLOCKS),
    Damage("block-chunk-grid-of-two-calls", _shape(BLK, [2, 1, 2, 8, 8, 8], [2, 1, 2, 8, 8, 8]), BLK, BLOCKS),
    Damage("block-dimension-names", _json(f"{BLK}/zarr.json", lambda d: d.__setitem__("dimension_names", list("abcdef"))),
           BLK, BLOCKS),
    Damage("block-dtype-float64", _json(f"{BLK}/zarr.json", lambda d: d.__setitem__("data_type", "float64")), BLK, BLOCKS),
    Damage("block-unknown-codec", _json(f"{BLK}/zarr.json", lambda d: d.__setitem__("codecs", [{"name": "evil"}])),
           BLK, BLOCKS | {"info"}),
    Damage("block-unknown-dtype", _json(f"{BLK}/zarr.json", lambda d: d.__setitem__("data_type", "evil")),
           BLK, BLOCKS | {"info"}),
    Damage("block-zstd-over-raw-chunks", _json(f"{BLK}/zarr.json", lambda d: d["codecs"].append(
        {"name": "zstd", "configuration": {"level": 3, "checksum": False}})), BLK, BLOCKS),
    Damage("block-recorded-steps-int", _attrs(BLK, _set("recorded_steps", 5)), "'recorded_steps'", BLOCKS),
    # --- attention
    Damage("attention-chunk-truncated", _bytes(f"{ATT}/{ATT_CHUNK}", lambda b: b[:7]), ATT, ATTENTION),
    Damage("attention-chunk-deleted", _delete(f"{ATT}/{ATT_CHUNK}"), ATT, ATTENTION),
    Damage("attention-chunk-link-to-dev-zero", _replace(f"{ATT}/{ATT_CHUNK}", lambda p, o: os.symlink("/dev/zero", p)),
           ATT, ATTENTION),
    Damage("attention-fill-value-string", _json(f"{ATT}/zarr.json", lambda d: d.__setitem__("fill_value", "abc")),
           ATT, ATTENTION),
    Damage("attention-layer-hw-string", _attrs(ATT, _set("layer_hw", "8x8")), "'layer_hw'", ATTENTION),
    # --- call tables
    Damage("call-done-truncated", _bytes(f"{L}/call_done/c.0", lambda b: b[:3]), f"{L}/call_done", CALLS),
    Damage("call-step-deleted", _delete(f"{L}/call_step/c.0"), f"{L}/call_step", CALLS),
    Damage("call-step-fifo", _replace(f"{L}/call_step/c.0", _fifo), f"{L}/call_step", CALLS),
    Damage("call-step-huge-shape", _shape(f"{L}/call_step", [10**12]), f"{L}/call_step", CALLS),
    Damage("call-done-huge-shape", _shape(f"{L}/call_done", [10**12]), f"{L}/call_done", CALLS),
    Damage("call-done-float64", _json(f"{L}/call_done/zarr.json", lambda d: d.__setitem__("data_type", "float64")),
           f"{L}/call_done", CALLS),
    # --- final images
    Damage("images-huge-count", _shape(f"{L}/images", [10**9, 64, 64, 3]), f"{L}/images", FINALS),
    Damage("images-huge-pixels", _shape(f"{L}/images", [1, 10**6, 10**6, 3], [1, 10**6, 10**6, 3]), f"{L}/images", FINALS),
    Damage("images-chunk-truncated", _bytes(f"{L}/images/c.0.0.0.0", lambda b: b[: len(b) // 2]), f"{L}/images", FINALS),
    Damage("images-chunk-deleted", _delete(f"{L}/images/c.0.0.0.0"), f"{L}/images", FINALS),
    Damage("images-chunk-link-to-etc-passwd", _replace(f"{L}/images/c.0.0.0.0", lambda p, o: os.symlink("/etc/passwd", p)),
           f"{L}/images", FINALS),
    Damage("latents-chunk-deleted", _delete(f"{L}/latents/c.0.0.0.0"), f"{L}/latents", NONE),
    # --- root document and attributes
    Damage("root-zarr-json-list", _json("zarr.json", lambda d: [d]), "zarr.json", ALL),
    Damage("root-zarr-json-truncated", _bytes("zarr.json", lambda b: b[:100]), "zarr.json", ALL),
    Damage("root-zarr-json-link", lambda s: (shutil.move(s / "zarr.json", s.parent / "root.json"),
                                             os.symlink(s.parent / "root.json", s / "zarr.json")), "zarr.json", ALL),
    Damage("root-attributes-list", _json("zarr.json", lambda d: d.__setitem__("attributes", [d["attributes"]])),
           "attributes", ALL),
    Damage("header-version-string", _attrs("", lambda a: a["dumpunet"].__setitem__("format_version", "1")),
           "format_version", ALL),
    Damage("runs-integer", _attrs("", _set("runs", 3)), "'runs'", ALL),
    Damage("runs-dict-item", _attrs("", lambda a: a["runs"].append({"name": "x"})), "'runs'", ALL),
    Damage("run-named-dotdot", _attrs("", lambda a: a["runs"].append("..")), "'..'", ALL),
    Damage("run-named-absolute", _attrs("", lambda a: a["runs"].append("/tmp/x")), "'/tmp/x'", ALL),
    Damage("run-listed-but-missing", _attrs("", lambda a: a["runs"].append("ghost")), "'ghost'", {"info"}),
    Damage("blocks-dict", _attrs("", _set("blocks", {"IN01": {}})), "'blocks'", ALL),
    Damage("blocks-entry-string", _attrs("", lambda a: a["blocks"].__setitem__(0, "IN00")), "block table entry 0", ALL),
    Damage("blocks-entry-missing-name", _attrs("", lambda a: a["blocks"][0].pop("name")), "'name'", ALL),
    Damage("blocks-entry-shape-string", _attrs("", lambda a: a["blocks"][1].__setitem__("output_shape", "8x8x8")),
           "'output_shape'", ALL),
    Damage("pairs-string", _attrs("", _set("pairs", "base,layered")), "'pairs'", ALL),
    Damage("pairs-entry-missing-layered", _attrs("", lambda a: a["pairs"][0].pop("layered")), "'layered'", ALL),
    Damage("pairs-entry-unknown-run", _attrs("", lambda a: a["pairs"][0].__setitem__("base", "nobody")), "'nobody'", {"diff", "sweep"}),
    # --- run attributes
    Damage("run-zarr-json-deleted", _delete(f"{L}/zarr.json"), "'layered'", ALL),
    Damage("run-group-says-array", _json(f"{L}/zarr.json", lambda d: d.__setitem__("node_type", "array")), L, ALL),
    Damage("run-n-images-string", _attrs(L, _set("n_images", "1")), "'n_images'", ALL),
    Damage("run-guidance-unknown", _attrs(L, _set("guidance", ["cond", "neg"])), "'guidance'", ALL),
    Damage("run-attention-layer-escaping", _attrs(L, _set("attention_layers", ["/outside/ESCAPED"])),
           "'attention_layers'", ALL),
    Damage("run-tokens-list", _attrs(L, _set("tokens", [1, 2])), "'tokens'", ALL),
    Damage("run-height-string", _attrs(L, _set("height", "64")), "'height'", ALL),
]
"""The corpus: every kind of damage the reader and ``validate`` must notice."""


def craft(base: Path, dest: Path, damage: Damage) -> Path:
    """Copy ``base`` to ``dest`` (a fresh folder holds it, with room for outside files) and damage the copy."""
    shutil.copytree(base, dest, symlinks=True)
    damage.apply(dest)
    return dest

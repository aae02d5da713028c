"""Check a store against the schema: ``dumpunet validate`` and :func:`validate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from dumpunet.specs import parse_ints
from dumpunet.store.schema import (
    ATTENTION_FEATURES,
    BLOCK_ARRAYS,
    CALL_ARRAYS,
    IMAGES,
    LATENTS,
    RECORD_DTYPES,
    STEPS_ATTR,
    ArrayKind,
    BlockInfo,
    open_array,
    open_root,
    run_group_path,
)


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

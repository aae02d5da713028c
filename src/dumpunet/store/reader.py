"""Read a dumpunet store: the read-only object behind ``dumpunet.open``.

Reads touch only the chunks they need: ``features(block, step=...)`` reads one
(call, image, guidance) chunk of one block.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from dumpunet.store import schema
from dumpunet.errors import IncompleteStepError, SelectionError, StoreError
from dumpunet.specs import format_ints, parse_blocks, parse_ints, parse_layers, resolve_block

Which = Literal["output", "input"]


@dataclass(frozen=True)
class CallTable:
    """Sampler step, sub-step, timestep and completion of every recorded U-Net call of a run."""

    step: np.ndarray
    substep: np.ndarray
    timestep: np.ndarray
    done: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.done)

    @property
    def complete_steps(self) -> list[int]:
        """Steps whose every recorded call is completely written."""
        bad = set(self.step[~self.done].tolist())
        return sorted(set(self.step[self.done].tolist()) - bad)

    @property
    def incomplete_steps(self) -> list[int]:
        return sorted(set(self.step[~self.done].tolist()))

    def index(self, step: int, substep: int = 0) -> int:
        """Return the call index of (step, substep), or raise a readable error."""
        hits = np.flatnonzero((self.step == step) & (self.substep == substep))
        if len(hits) == 0:
            if step in self.step:
                subs = sorted(set(self.substep[self.step == step].tolist()))
                raise SelectionError(f"step {step} has no U-Net call {substep} (recorded calls: {format_ints(subs)})")
            raise SelectionError(f"step {step} was not recorded (recorded steps: {format_ints(self.complete_steps) or 'none'})")
        k = int(hits[0])
        if not self.done[k]:
            raise IncompleteStepError(
                f"step {step} was not completely written (the recording was interrupted); "
                f"complete steps: {format_ints(self.complete_steps) or 'none'}"
            )
        return k


class Run:
    """One generation inside a store (``main``, or ``base``/``layered`` of a pair)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        try:
            grp = store.root[schema.run_group_path(name)]
        except KeyError:
            raise StoreError(f"{store.path}: run {name!r} is listed but missing") from None
        self.attrs: dict[str, Any] = dict(grp.attrs)

    @cached_property
    def calls(self) -> CallTable:
        arrays = {}
        for kind in schema.CALL_ARRAYS:
            try:
                arrays[kind.key] = schema.open_array(self.store.root, kind, run=self.name)[...]
            except KeyError:
                arrays[kind.key] = np.zeros(0, dtype=kind.dtype)
        n = min(len(a) for a in arrays.values())
        return CallTable(
            step=arrays["call_step"][:n].astype(np.int64),
            substep=arrays["call_substep"][:n].astype(np.int64),
            timestep=arrays["call_timestep"][:n],
            done=arrays["call_done"][:n] == 1,
        )

    @property
    def steps(self) -> list[int]:
        """Completely recorded sampler steps, ascending."""
        return self.calls.complete_steps

    @property
    def complete(self) -> bool:
        """Whether the recording of this run finished (final images written)."""
        return bool(self.attrs.get("complete", False))

    @property
    def guidance_labels(self) -> list[str]:
        return list(self.attrs.get("guidance", ["cond"]))

    @property
    def n_images(self) -> int:
        return int(self.attrs.get("n_images", 1))

    def recorded(self, which: Which = "output") -> list[str]:
        """Blocks of this run that hold ``which`` arrays, in block order."""
        try:
            grp = self.store.root[schema.blocks_group_path(self.name)]
        except KeyError:
            return []
        names = {name for name, node in grp.groups() if which in node}
        return [b for b in self.store.blocks if b in names]

    def array(self, block: str, which: Which = "output") -> zarr.Array:
        """The zarr array ``[call, image, guidance, channel, y, x]`` of one block."""
        name = self.store.resolve_block(block)
        try:
            return schema.open_array(self.store.root, schema.BLOCK_ARRAYS[which], run=self.name, block=name)
        except KeyError:
            got = self.recorded(which)
            raise SelectionError(
                f"block {name} has no recorded {which} in run {self.name!r} "
                f"(recorded: {', '.join(got) if got else 'none'})"
            ) from None

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
        g = self.guidance_index(guidance)
        if not 0 <= image < arr.shape[1]:
            raise SelectionError(f"image {image} out of range 0..{arr.shape[1] - 1}")
        k = self.calls.index(step, substep)
        if k >= arr.shape[0]:
            raise IncompleteStepError(f"step {step} of block {block} was not written")
        out = arr[k, image, g]
        return out.astype(dtype) if dtype is not None else out

    # ------------------------------------------------------------------ attention

    @property
    def attention_layers(self) -> list[str]:
        """Attention layers recorded in this run, in U-Net order (``IN01.attn2``, ...)."""
        return list(self.attrs.get("attention_layers", []))

    def attention_array(self, layer: str, feature: str = "qk") -> zarr.Array:
        """The zarr array of one attention feature, e.g. qk ``[call, image, guidance, head, query, token]``."""
        name = next((n for n in self.attention_layers if n.upper() == layer.upper()), None)
        if name is None:
            got = self.attention_layers
            raise SelectionError(
                f"no attention layer {layer!r} recorded in run {self.name!r} "
                + (f"(recorded: {', '.join(got)})" if got else "(this store was recorded without attention)")
            )
        try:
            return schema.open_array(self.store.root, schema.ATTENTION_FEATURES[feature], run=self.name, layer=name)
        except KeyError:
            raise SelectionError(f"layer {name} has no recorded {feature!r} (record with --attention {feature})") from None

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
        arr = self.attention_array(layer, feature)
        g = self.guidance_index(guidance)
        if not 0 <= image < arr.shape[1]:
            raise SelectionError(f"image {image} out of range 0..{arr.shape[1] - 1}")
        k = self.calls.index(step, substep)
        only = arr.attrs.get(schema.STEPS_ATTR)
        if only and step not in parse_ints(only, 0, None):
            raise SelectionError(f"layer {layer} was recorded at steps {only} only, not at step {step}")
        if k >= arr.shape[0]:
            raise IncompleteStepError(f"step {step} of layer {layer} was not written")
        out = arr[k, image, g]
        return out.astype(dtype) if dtype is not None else out

    def token_row(self, *, guidance: str = "cond", image: int = 0, block: str | None = None) -> dict[str, Any] | None:
        """What the text encoder read for one half of the batch: ``{"ids", "tokens", "length"}``.

        ``length`` counts the real tokens, start and end included. With per-block prompts,
        ``block`` (or a layer name) picks that block's prompt. None where nothing was encoded
        (SDXL's zeroed empty negative prompt) or the pipeline got embeddings directly.
        """
        prompts = self.attrs.get("block_prompts", {}).get(guidance)
        if prompts and block is not None:
            return self.attrs.get("prompt_tokens", {}).get(prompts.get(block.split(".", 1)[0]))
        rows = self.attrs.get("tokens", {}).get(guidance)
        if not rows:
            return None
        return rows[image] if len(rows) == self.n_images else rows[0]

    def image(self, i: int = 0) -> np.ndarray:
        """Return the final image ``i`` as uint8 ``[H, W, 3]``."""
        try:
            arr = schema.open_array(self.store.root, schema.IMAGES, run=self.name)
        except KeyError:
            raise SelectionError(
                f"run {self.name!r} has no final images (the recording did not finish)"
            ) from None
        if not 0 <= i < arr.shape[0]:
            raise SelectionError(f"image {i} out of range 0..{arr.shape[0] - 1}")
        return arr[i]

    def latents(self) -> np.ndarray:
        """Return the final latents ``[image, channel, y, x]`` (float32)."""
        try:
            return schema.open_array(self.store.root, schema.LATENTS, run=self.name)[...]
        except KeyError:
            raise SelectionError(f"run {self.name!r} has no final latents") from None


class Store:
    """A read-only dumpunet store. Open one with :func:`dumpunet.open`.

    Examples
    --------
    >>> store = dumpunet.open("girl.zarr")  # doctest: +SKIP
    >>> store.blocks[:3], store.steps[-1]  # doctest: +SKIP
    (['IN00', 'IN01', 'IN02'], 20)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.root = schema.open_root(self.path)
        attrs = dict(self.root.attrs)
        self.header: dict[str, Any] = dict(attrs[schema.HEADER_KEY])
        self.attrs = attrs
        self.block_table: list[schema.BlockInfo] = [schema.BlockInfo.from_json(b) for b in attrs.get("blocks", [])]
        self.aliases = schema.block_aliases(self.block_table)
        self.run_names: list[str] = list(attrs.get("runs", []))
        self._runs: dict[str, Run] = {}

    def __repr__(self) -> str:
        return f"<dumpunet.Store {str(self.path)!r} runs={self.run_names} blocks={len(self.blocks)} steps={format_ints(self.steps)}>"

    # ------------------------------------------------------------------ structure

    @property
    def blocks(self) -> list[str]:
        """Every block of the model, in the model's order (recorded or not)."""
        return [b.name for b in self.block_table]

    @property
    def metadata(self) -> dict[str, Any]:
        """Run parameters, model identity and package versions, as JSON-like dicts."""
        return {
            "format": self.header,
            "model": self.attrs.get("model", {}),
            "versions": self.attrs.get("versions", {}),
            "runs": {name: self.run(name).attrs for name in self.run_names},
        }

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
    def pairs(self) -> list[dict[str, str]]:
        """Paired runs (``--pair``, ``sweep``): dicts with ``base``, ``layered`` and ``label``."""
        return [dict(p) for p in self.attrs.get("pairs", [])]

    def pair(self, label: str | None = None) -> tuple[Run, Run]:
        """Return the (base, layered) runs of one pair (default: the only or first pair)."""
        pairs = self.pairs
        if not pairs:
            raise SelectionError(f"{self.path} holds no paired runs (record with --pair, or dumpunet sweep)")
        if label is None:
            chosen = pairs[0]
        else:
            found = [p for p in pairs if p["label"].upper() == label.upper()]
            if not found:
                raise SelectionError(f"no pair {label!r} in {self.path} (pairs: {', '.join(p['label'] for p in pairs)})")
            chosen = found[0]
        return self.run(chosen["base"]), self.run(chosen["layered"])

    def block_info(self, block: str) -> schema.BlockInfo:
        name = self.resolve_block(block)
        return next(b for b in self.block_table if b.name == name)

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
        total = int(r.attrs.get("steps", max(r.steps, default=1)))
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

    def heatmap(self, word: str, **options: Any) -> np.ndarray:
        """Return a DAAM-style heatmap ``[H, W]`` in [0, 1] of where ``word`` acts.

        Options: ``layers``, ``steps`` (specs), ``guidance``, ``image``, ``run``; see
        :func:`dumpunet.analyzer.heatmap.word_heatmap`.

        Examples
        --------
        >>> store.heatmap("hair", steps="1-10").shape  # doctest: +SKIP
        (512, 512)
        """
        from dumpunet.analyzer.heatmap import word_heatmap

        return word_heatmap(self, word, **options)

    def disk_bytes(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
        return total


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open a dumpunet store read-only.

    Examples
    --------
    >>> store = dumpunet.open("girl.zarr")  # doctest: +SKIP
    >>> store.features("OUT11", step=20).shape  # doctest: +SKIP
    (320, 64, 64)
    """
    return Store(path)


"""The recording context manager: hooks in, one generation, hooks out.

Only public diffusers/torch mechanisms are used: ``register_forward_hook`` and
``register_forward_pre_hook`` on the U-Net and its submodules (and attention processors for
attention capture). Hooks only read tensors; each captured tensor is copied (and converted to
the store dtype) inside the hook, so later in-place operations cannot alter what is stored and
nothing the U-Net computes changes.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dumpunet.store import schema
from dumpunet.errors import RecordError
from dumpunet.recorder.attention_capture import (
    AttentionCapture,
    AttentionOptions,
    LayerPlan,
    feature_shape,
    query_grid,
    select_layers,
)
from dumpunet.recorder.blocks import block_table, select_blocks, unet_blocks
from dumpunet.recorder.buffers import HostBuffers
from dumpunet.recorder.step_clock import executed_steps, starts_new_step
from dumpunet.recorder.identity import software_versions, unet_fingerprint
from dumpunet.recorder.tensors import decoded_to_uint8, first_tensor, jsonable, output_tensor
from dumpunet.specs import format_ints, parse_ints
from dumpunet.store.writer import SlabSource, StoreWriter

_TORCH_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class Recorder:
    """Record block outputs (and optionally inputs) of every U-Net call of one generation.

    Use it through :func:`dumpunet.record`; see there for the parameters.
    """

    def __init__(
        self,
        pipe: Any,
        path: str | Path | None = None,
        *,
        blocks: str = "",
        steps: str = "",
        inputs: bool = False,
        dtype: str = "fp16",
        overwrite: bool = False,
        run: str = "main",
        run_info: Mapping[str, Any] | None = None,
        model_info: Mapping[str, Any] | None = None,
        progress: bool = True,
        writer: StoreWriter | None = None,
        max_queue_bytes: int = 1 << 30,
        attention: AttentionOptions | str | None = "qk",
    ) -> None:
        if dtype not in _TORCH_DTYPES:
            raise RecordError(f"unknown dtype {dtype!r}; choose one of {', '.join(_TORCH_DTYPES)}")
        if (path is None) == (writer is None):
            raise ValueError("pass exactly one of path and writer")
        self.pipe = pipe
        self.unet: nn.Module = pipe.unet
        self.units = unet_blocks(self.unet)
        self.selected = select_blocks(self.units, blocks)
        self.steps_spec = steps
        if steps.strip():  # syntax errors now; the range is checked once the step count is known
            parse_ints(steps, 1, None, noun="step", what="step spec")
        self.inputs = inputs
        if isinstance(attention, str) or attention is None:
            feats = AttentionOptions.parse_features(attention or "")
            attention = AttentionOptions(features=feats) if feats else None
        self.attention = attention
        self.attn_layers = select_layers(self.unet, self.units, attention) if attention is not None else []
        self.dtype = dtype
        self.run = run
        self.run_info = dict(run_info or {})
        self.progress = progress
        self._owns_writer = writer is None
        self._writer_args = dict(path=path, overwrite=overwrite, max_queue_bytes=max_queue_bytes)
        self._model_info = dict(model_info or {})
        self.writer = writer
        self._handles: list[Any] = []
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self.n_calls = 0
        self.step = 0
        self.substep = 0
        self.total_steps: int | None = None
        self._record_steps: set[int] = set()
        self._recording = False
        self._slabs: dict[tuple[str, str], SlabSource] = {}
        self._taken: list[torch.Tensor] = []
        self._buffers = HostBuffers()
        self._slab_bytes = 0
        self._timestep = 0.0
        self._batch: int | None = None
        self._n_images = 1
        self._n_guidance = 1
        self._table: dict[str, schema.BlockInfo] = {}
        self._images: list[np.ndarray] = []
        self._latents: list[np.ndarray] = []
        self._bar: tqdm | None = None
        self._attn: AttentionCapture | None = None
        self._attn_shapes: dict[tuple[str, str], tuple[int, ...]] = {}
        self._self_steps: set[int] = set()
        self._token_ids: list[list[list[int]]] = []

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Recorder:
        if self.writer is None:
            model = {
                "name": getattr(self.unet.config, "_name_or_path", "") or type(self.pipe).__name__,
                "pipeline": type(self.pipe).__name__,
                "unet_fingerprint": unet_fingerprint(self.unet),
                **self._model_info,
            }
            self.writer = StoreWriter(
                self._writer_args["path"],
                model=model,
                versions=software_versions(),
                overwrite=self._writer_args["overwrite"],
                max_queue_bytes=self._writer_args["max_queue_bytes"],
            )
        try:
            self._install()
        except BaseException:
            self._remove()
            if self._owns_writer:
                self.writer.close()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._remove()
        if self._bar is not None:
            self._bar.close()
        assert self.writer is not None
        try:
            if exc is None:
                if self.n_calls == 0:
                    raise RecordError("the pipeline never called the U-Net inside the record block")
                self.writer.finish_run(
                    self.run,
                    images=np.concatenate(self._images) if self._images else None,
                    latents=np.concatenate(self._latents) if self._latents else None,
                )
            elif self.n_calls > 0:
                reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else f"stopped by {type(exc).__name__}: {exc}"
                self.writer.mark_interrupted(self.run, reason)
        finally:
            if self._owns_writer:
                if exc is None:
                    self.writer.close()
                else:
                    try:
                        self.writer.close()
                    except RecordError:
                        pass  # the body's own exception is the one to report

    def set_images(self, images: np.ndarray) -> None:
        """Store these final images (uint8 ``[N, H, W, 3]``) instead of the decoder's output."""
        self._images = [np.asarray(images, dtype=np.uint8)]

    # ------------------------------------------------------------------ hooks

    def _install(self) -> None:
        mods = dict(self.unet.named_modules())
        add = self._handles.append
        add(self.unet.register_forward_pre_hook(self._on_unet_start, with_kwargs=True))
        add(self.unet.register_forward_hook(self._on_unet_end))
        for u in self.units:
            if u.name not in self.selected:
                continue
            add(mods[u.output_module].register_forward_hook(self._output_hook(u.name)))
            if self.inputs:
                add(mods[u.input_module].register_forward_pre_hook(self._input_hook(u.name), with_kwargs=True))
        if self.attn_layers:
            assert self.attention is not None
            plans = [
                LayerPlan(layer, self.attention.features if layer.cross else ("qk",)) for layer in self.attn_layers
            ]
            self._attn = AttentionCapture(self.unet, plans, self._on_attention, self._attention_active)
            self._attn.install()
        text_encoder = getattr(self.pipe, "text_encoder", None)
        if text_encoder is not None:
            add(text_encoder.register_forward_pre_hook(self._on_text_encoder, with_kwargs=True))
        vae = getattr(self.pipe, "vae", None)
        if vae is not None:
            add(vae.decoder.register_forward_hook(self._on_decoded))
            entry = getattr(vae, "post_quant_conv", None) or vae.decoder
            add(entry.register_forward_pre_hook(self._on_decode_start, with_kwargs=True))

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        if self._attn is not None:
            self._attn.remove()
            self._attn = None

    def _on_unet_start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = first_tensor(args, kwargs, "sample")
        if self.n_calls == 0:
            self._setup(sample, kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None))
        elif sample.shape[0] != self._batch:
            raise RecordError(f"the U-Net batch changed from {self._batch} to {sample.shape[0]} during the run")
        if starts_new_step(self.pipe.scheduler, self.n_calls):
            self.step += 1
            self.substep = 0
        else:
            self.substep += 1
        t = args[1] if len(args) > 1 else kwargs.get("timestep", 0.0)
        self._timestep = float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)
        self._recording = self.step in self._record_steps
        self._slabs = {}
        self._taken = []
        self._slab_bytes = 0

    def _on_unet_end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.n_calls += 1
        if self._recording:
            want = {(b, "output") for b in self.selected} | ({(b, "input") for b in self.selected} if self.inputs else set())
            if self._attn is not None:
                want |= {
                    (p.layer.name, f) for p in self._attn.plans.values() if self._attention_active(p) for f in p.features
                }
            missing = sorted(want - set(self._slabs))
            if missing:
                raise RecordError(f"these blocks did not run during the U-Net call: {missing}")
            assert self.writer is not None
            taken, self._taken = self._taken, []
            self.writer.submit_call(
                self.run,
                step=self.step,
                substep=self.substep,
                timestep=self._timestep,
                slabs=self._slabs,
                nbytes=self._slab_bytes,
                on_written=lambda: self._buffers.give_back(taken),
            )
            self._slabs = {}
        if self._bar is not None:
            self._bar.update(self.step - self._bar.n)

    def _capture(self, key: tuple[str, str], t: torch.Tensor, expect: tuple[int, ...]) -> None:
        if tuple(t.shape[1:]) != expect or t.shape[0] != self._batch:
            raise RecordError(
                f"{key[0]} {key[1]} has shape {tuple(t.shape)}, expected {(self._batch, *expect)} "
                "(this U-Net's structure is not one dumpunet understands)"
            )
        shape = (self._n_guidance, self._n_images, *expect)
        dtype = _TORCH_DTYPES[self.dtype]
        src = t.detach()
        host = self._buffers.take(tuple(src.shape), dtype, pinned=src.device.type == "cuda")
        self._taken.append(host)
        self._slab_bytes += host.numel() * host.element_size()
        if src.device.type == "cpu":
            host.copy_(src)  # converts to the store dtype; later in-place changes to src cannot reach it
            self._slabs[key] = host.numpy().reshape(shape)
            return
        host.copy_(src.to(dtype), non_blocking=True)
        event = torch.cuda.Event()
        event.record()

        def ready() -> np.ndarray:
            event.synchronize()
            return host.numpy().reshape(shape)

        self._slabs[key] = ready

    def _output_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._recording:
                self._capture((name, "output"), output_tensor(output), self._table[name].output_shape)

        return hook

    def _input_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._recording:
                self._capture((name, "input"), first_tensor(args, kwargs), self._table[name].input_shape)

        return hook

    def _attention_active(self, plan: LayerPlan) -> bool:
        return self._recording and (plan.layer.cross or self.step in self._self_steps)

    def _on_attention(self, layer: str, feature: str, t: torch.Tensor) -> None:
        self._capture((layer, feature), t, self._attn_shapes[(layer, feature)])

    def _on_text_encoder(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor) and self.n_calls == 0:
            self._token_ids.append(ids.detach().cpu().tolist())

    def _tokens(self) -> dict[str, Any]:
        """Token ids and strings the text encoder saw: the prompt first, then the negative prompt."""
        tok = getattr(self.pipe, "tokenizer", None)
        if tok is None or not self._token_ids:
            return {}
        out: dict[str, Any] = {}
        for label, rows in zip(("cond", "uncond"), self._token_ids):
            out[label] = [{"ids": ids, "tokens": tok.convert_ids_to_tokens(ids)} for ids in rows]
        eos = getattr(tok, "eos_token_id", None)
        for rows in out.values():
            for row in rows:
                row["length"] = row["ids"].index(eos) + 1 if eos in row["ids"] else len(row["ids"])
        return {"tokens": out}

    def _setup_attention(self, context: torch.Tensor | None) -> None:
        """Fix each layer's query selection and shapes, and create its arrays."""
        assert self._attn is not None and self.attention is not None and self.writer is not None
        opts = self.attention
        mods = dict(self.unet.named_modules())
        if opts.self_attention:
            self._self_steps = set(
                parse_ints(opts.self_steps, 1, self.total_steps, noun="step", what="self-attention step spec")
            ) if opts.self_steps.strip() else set(range(1, (self.total_steps or 0) + 1))
        arrays = {}
        for path, plan in list(self._attn.plans.items()):
            layer = plan.layer
            attn = mods[path]
            hw = self._table[layer.block].input_shape[1:]
            heads = int(attn.heads)
            head_dim = int(attn.to_k.out_features) // heads
            attrs = schema.LayerAttrs(layer_hw=(int(hw[0]), int(hw[1])), module=path, cross_attention=layer.cross)
            if layer.cross:
                n_key = int(context.shape[1]) if context is not None else int(attn.to_k.in_features)
                n_query = hw[0] * hw[1]
            else:
                ys, xs = query_grid(hw, opts.query_region, opts.query_stride)
                n_key, n_query = hw[0] * hw[1], len(ys) * len(xs)
                idx = torch.tensor([y * hw[1] + x for y in ys for x in xs], dtype=torch.long)
                full = n_query == n_key
                plan = LayerPlan(layer, plan.features, None if full else idx, opts.self_heads == "mean")
                self._attn.plans[path] = plan
                attrs = replace(attrs, query_rows=tuple(ys), query_cols=tuple(xs), heads="mean" if plan.head_mean else "all",
                                recorded_steps=format_ints(self._self_steps & self._record_steps))
            for feature in plan.features:
                shape = feature_shape(feature, layer, heads, head_dim, n_query, n_key, plan.head_mean)
                self._attn_shapes[(layer.name, feature)] = shape
                kind = schema.ATTENTION_FEATURES[feature]
                arrays[(layer.name, feature)] = (kind, (self._n_images, self._n_guidance, *shape),
                                                 schema.RECORD_DTYPES[self.dtype], {"layer": layer.name}, attrs)
        self.writer.add_arrays(self.run, arrays)

    def _on_decode_start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._latents.append(first_tensor(args, kwargs).detach().float().cpu().numpy().copy())

    def _on_decoded(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._images.append(decoded_to_uint8(output_tensor(output).detach()))

    # ------------------------------------------------------------------ first call

    def _setup(self, sample: torch.Tensor, context: torch.Tensor | None) -> None:
        sched = self.pipe.scheduler
        self._batch = int(sample.shape[0])
        cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        self._n_guidance = 2 if cfg and self._batch % 2 == 0 else 1
        self._n_images = self._batch // self._n_guidance
        latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        table = block_table(self.unet, latent_hw)
        self._table = {b.name: b for b in table}
        self.total_steps = executed_steps(sched)
        self._record_steps = set(
            parse_ints(self.steps_spec, 1, self.total_steps, noun="step", what="step spec")
        )
        labels = list(schema.GUIDANCE_LABELS) if self._n_guidance == 2 else ["cond"]
        vae_sf = int(getattr(self.pipe, "vae_scale_factor", 8))
        # TODO(recorder rewrite): build RunAttrs field by field instead of parsing a dict
        attrs = schema.RunAttrs.from_json({
            **jsonable(self.run_info),
            "steps": self.total_steps,
            "num_inference_steps": int(sched.num_inference_steps),
            "scheduler": type(sched).__name__,
            "scheduler_config": jsonable(dict(sched.config)),
            "n_images": self._n_images,
            "guidance": labels,
            "latent_size": list(latent_hw),
            "height": latent_hw[0] * vae_sf,
            "width": latent_hw[1] * vae_sf,
            "record_steps": format_ints(self._record_steps),
            "recorded_blocks": list(self.selected),
            "inputs": self.inputs,
            "dtype": schema.RECORD_DTYPES[self.dtype],
            "attention_layers": [layer.name for layer in self.attn_layers],
            **self._tokens(),
        }, f"runs/{self.run}")
        assert self.writer is not None
        self.writer.set_block_table(table)
        self.writer.begin_run(
            self.run,
            attrs,
            [self._table[b] for b in self.selected],
            which=("output", "input") if self.inputs else ("output",),
            dtype=schema.RECORD_DTYPES[self.dtype],
        )
        if self._attn is not None:
            self._setup_attention(context)
        self._bar = tqdm(
            total=self.total_steps, desc=f"record {self.run}", unit="step", file=sys.stderr, disable=not self.progress
        )


def record(pipe: Any, path: str | Path, **options: Any) -> Recorder:
    """Record every selected U-Net block of the generation run inside the ``with`` block.

    Parameters
    ----------
    pipe
        A diffusers ``StableDiffusionPipeline``/``StableDiffusionXLPipeline`` or an img2img variant.
    path
        The store to create (a directory; an existing one needs ``overwrite=True``).
    blocks, steps
        Block and step specs (``"IN00-OUT11(+2)"``, ``"1-20(+5)"``); empty = all; blocks
        ``"none"`` records no block outputs (attention only).
    attention
        Cross-attention features (``"qk"``, ``"qk,k,vqk"``; ``None`` = no attention), or an
        :class:`~dumpunet.recorder.attention_capture.AttentionOptions` for block filters and self-attention.
    inputs
        Also store each block's input.
    dtype
        ``"fp16"`` (default) or ``"fp32"`` for stored activations.
    run_info
        Extra JSON metadata for the run (prompt, seed, ... ; the CLI fills it).
    progress
        Show a progress bar on stderr.

    Examples
    --------
    >>> with dumpunet.record(pipe, "out.zarr", blocks="IN00-OUT11", steps="1-20") as rec:  # doctest: +SKIP
    ...     image = pipe("a cute girl", num_inference_steps=20).images[0]
    """
    return Recorder(pipe, path, **options)

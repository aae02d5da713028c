"""The recording context manager: hooks in, one generation, hooks out.

Only public diffusers/torch mechanisms are used: ``register_forward_hook`` and
``register_forward_pre_hook`` on the U-Net and its submodules (and attention processors for
attention capture). Hooks only read tensors; each captured tensor is copied (and converted to
the store dtype) inside the hook, so later in-place operations cannot alter what is stored and
nothing the U-Net computes changes.

The :class:`Recorder` is the hook wiring. What a call stores is decided by the
:class:`~dumpunet.recorder.plan.RecordingPlan`, made at the first U-Net call (when the latent
size, batch and step count are known); the copies are a :class:`~dumpunet.recorder.buffers.Capture`;
which step a call belongs to is a :class:`~dumpunet.recorder.step_clock.StepClock`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dumpunet.errors import RecordError
from dumpunet.recorder.attention_capture import AttentionCapture
from dumpunet.recorder.attention_layers import AttentionOptions
from dumpunet.recorder.buffers import Capture, HostBuffers
from dumpunet.recorder.identity import model_attrs, software_versions
from dumpunet.recorder.plan import LayerPlan, RecordingPlan, RecordOptions, Selection, token_length, token_row
from dumpunet.recorder.step_clock import StepClock, executed_steps
from dumpunet.recorder.tensors import decoded_to_uint8, first_tensor, jsonable, output_tensor
from dumpunet.specs import format_ints
from dumpunet.store import schema
from dumpunet.store.writer import StoreWriter

_TORCH_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


@dataclass
class _Seen:
    """What the pipeline produced outside the U-Net: token ids, the latents decoded, the images."""

    token_ids: list[list[list[int]]] = field(default_factory=list)
    latents: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)


def open_writer(
    path: str | Path,
    pipe: Any,
    model_info: Mapping[str, Any],
    *,
    pairs: Sequence[schema.PairInfo] = (),
    prompt_list: schema.PromptListInfo | None = None,
    overwrite: bool = False,
    keep_runs: Sequence[str] | None = None,
    max_queue_bytes: int = 1 << 30,
) -> StoreWriter:
    """Create the store at ``path`` with its root attributes: the one place that writes them.

    Both :func:`record` and ``dumpunet record`` open their stores here, so the ``model`` and
    ``versions`` attributes of a store do not depend on which of them wrote it. ``keep_runs``:
    add to the existing store instead, keeping those runs (see :class:`StoreWriter`).
    """
    return StoreWriter(path, model=model_attrs(pipe, model_info), versions=software_versions(), pairs=pairs,
                       prompt_list=prompt_list, overwrite=overwrite, keep_runs=keep_runs,
                       max_queue_bytes=max_queue_bytes)


class Recorder:
    """Record block outputs (and optionally inputs) of every U-Net call of one generation.

    Use it through :func:`dumpunet.record`; see there for the parameters. ``writer`` (instead of
    a path) records one more run into a store that is already open (``dumpunet record --pair``);
    ``attrs`` holds the run's generation parameters (``dumpunet record`` fills them), to which the
    recorder adds what it sees. ``buffers``: the pool of host buffers to copy into, shared by the
    runs of one job so that later runs reuse the first one's memory (default: the run's own).
    """

    def __init__(
        self,
        pipe: Any,
        path: str | Path | None = None,
        *,
        options: RecordOptions,
        run: str = "main",
        attrs: schema.RunAttrs | None = None,
        model_info: Mapping[str, Any] | None = None,
        progress: bool = True,
        overwrite: bool = False,
        max_queue_bytes: int = 1 << 30,
        writer: StoreWriter | None = None,
        on_step: Callable[[int], None] | None = None,
        buffers: HostBuffers | None = None,
    ) -> None:
        if (path is None) == (writer is None):
            raise ValueError("pass exactly one of path and writer")
        self.pipe = pipe
        self.options = options
        self.selection = Selection.of(pipe.unet, options)
        self.run_name = run
        self.attrs = attrs or schema.RunAttrs()
        self.progress = progress
        self.on_step = on_step  # called after every U-Net call with the sampler step (one bar over many runs)
        self.writer = writer
        self._new_writer: Callable[[], StoreWriter] | None = None
        if writer is None:
            self._new_writer = lambda: open_writer(
                path, pipe, model_info or {}, overwrite=overwrite, max_queue_bytes=max_queue_bytes  # type: ignore[arg-type]
            )
        self.clock = StepClock()
        self.plan: RecordingPlan | None = None  # made at the first U-Net call
        self._capture: Capture | None = None
        self.buffers = buffers or HostBuffers(0)  # sized at the first call, to the writer's queue
        self._attn: AttentionCapture | None = None
        self._handles: list[Any] = []
        self._seen = _Seen()
        self._bar: tqdm | None = None
        self._started: tuple[float, float] | None = None  # (clock, writer wait) at the first U-Net call
        self.writer_wait_seconds = 0.0  # how long this run's U-Net calls waited on the writer (set on exit)

    @property
    def unet(self) -> nn.Module:
        return self.pipe.unet

    @property
    def n_calls(self) -> int:
        """U-Net calls seen so far."""
        return self.clock.calls

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Recorder:
        if self._new_writer is not None:
            self.writer = self._new_writer()
        try:
            self._install()
        except BaseException:
            self._remove()
            if self._new_writer is not None:
                self._writer().close()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._remove()
        if self._bar is not None:
            self._bar.close()
        writer = self._writer()
        try:
            if exc is None:
                if self.n_calls == 0:
                    raise RecordError("the pipeline never called the U-Net inside the record block")
                seen = self._seen
                took = self._waited(writer)
                writer.finish_run(
                    self.run_name,
                    images=np.concatenate(seen.images) if seen.images else None,
                    latents=np.concatenate(seen.latents) if seen.latents else None,
                    writer_wait_seconds=round(self.writer_wait_seconds, 3),
                )
                if self.progress:
                    print(wait_line(self.run_name, self.writer_wait_seconds, took), file=sys.stderr)
            elif self.n_calls > 0:
                reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else f"stopped by {type(exc).__name__}: {exc}"
                writer.mark_interrupted(self.run_name, reason)
        finally:
            if self._new_writer is not None:
                if exc is None:
                    writer.close()
                else:
                    try:
                        writer.close()
                    except RecordError:
                        pass  # the body's own exception is the one to report

    def set_images(self, images: np.ndarray) -> None:
        """Store these final images (uint8 ``[N, H, W, 3]``) instead of the decoder's output."""
        self._seen.images = [np.asarray(images, dtype=np.uint8)]

    def _writer(self) -> StoreWriter:
        assert self.writer is not None, "the writer exists inside the with block"
        return self.writer

    def _waited(self, writer: StoreWriter) -> float:
        """Set :attr:`writer_wait_seconds` from the writer's count; return the seconds since the first call."""
        assert self._started is not None, "a run with U-Net calls has started"
        t0, waited0 = self._started
        self.writer_wait_seconds = writer.waited_seconds - waited0
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ hooks

    def _install(self) -> None:
        mods = dict(self.unet.named_modules())
        add = self._handles.append
        add(self.unet.register_forward_pre_hook(self._on_unet_start, with_kwargs=True))
        add(self.unet.register_forward_hook(self._on_unet_end))
        for u in self.selection.units:
            if u.name not in self.selection.blocks:
                continue
            add(mods[u.output_module].register_forward_hook(self._output_hook(u.name)))
            if self.options.inputs:
                add(mods[u.input_module].register_forward_pre_hook(self._input_hook(u.name), with_kwargs=True))
        if self.selection.layers:
            assert self.options.attention is not None
            self._attn = AttentionCapture(
                self.unet, {layer: self.selection.features(layer) for layer in self.selection.layers},
                self._on_attention, self._attention_active, one_shot_bytes=self.options.attention.one_shot_bytes,
            )
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

    def _recording(self) -> bool:
        return self.plan is not None and self.clock.step in self.plan.record_steps

    def _on_unet_start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sample = first_tensor(args, kwargs, "sample")
        if self.plan is None:
            self._start(sample, kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None))
        assert self.plan is not None and self._capture is not None
        if sample.shape[0] != self._capture.batch:
            raise RecordError(f"the U-Net batch changed from {self._capture.batch} to {sample.shape[0]} during the run")
        t = args[1] if len(args) > 1 else kwargs.get("timestep", 0.0)
        self.clock.start_call(self.pipe.scheduler, self._timestep(t))
        self._capture.start_call(self.plan.expected_shapes(self.clock.step))

    def _timestep(self, t: Any) -> float | Callable[[], float]:
        """The call's timestep; on a GPU a callable the writer resolves (``float(t)`` would wait for the GPU)."""
        if not isinstance(t, torch.Tensor):
            return float(t)
        first = t.detach().reshape(-1)[:1]
        if not first.is_cuda:
            return float(first[0])
        assert self._capture is not None
        host = torch.empty((1,), dtype=torch.float64, pin_memory=True)
        wait = self._capture.device.copy(first, host, torch.float64)
        return lambda: (wait(), float(host[0]))[1]

    def _on_unet_end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        assert self.plan is not None and self._capture is not None
        clock = self.clock
        clock.end_call()
        if self._recording():
            missing = self._capture.missing()
            if missing:
                raise RecordError(f"these blocks did not run during the U-Net call: {missing}")
            slabs, nbytes, on_written = self._capture.take_call()
            self._writer().submit_call(self.run_name, step=clock.step, substep=clock.substep, timestep=clock.timestep,
                                       slabs=slabs, nbytes=nbytes, on_written=on_written)
        if self._bar is not None:
            self._bar.update(clock.step - self._bar.n)
        if self.on_step is not None:
            self.on_step(clock.step)

    def _keep(self, key: tuple[str, str], t: torch.Tensor) -> None:
        assert self._capture is not None
        self._capture.add(key, t)

    def _output_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._recording():
                self._keep((name, "output"), output_tensor(output))

        return hook

    def _input_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._recording():
                self._keep((name, "input"), first_tensor(args, kwargs))

        return hook

    def _attention_active(self, plan: LayerPlan) -> bool:
        return self._recording() and self.clock.step in plan.steps

    def _on_attention(self, layer: str, feature: str, t: torch.Tensor) -> None:
        self._keep((layer, feature), t)

    def _on_text_encoder(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor) and self.n_calls == 0:
            self._seen.token_ids.append(ids.detach().cpu().tolist())

    def _on_decode_start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._seen.latents.append(first_tensor(args, kwargs).detach().float().cpu().numpy().copy())

    def _on_decoded(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._seen.images.append(decoded_to_uint8(output_tensor(output).detach()))

    # ------------------------------------------------------------------ first call

    def _tokens(self) -> dict[str, tuple[schema.TokenRow, ...]]:
        """What the text encoder read, per guidance half: the prompt first, then the negative prompt."""
        tok = getattr(self.pipe, "tokenizer", None)
        if tok is None:
            return {}
        uncond, cond = schema.GUIDANCE_LABELS
        return {label: tuple(token_row(tok, ids) for ids in rows) for label, rows in zip((cond, uncond), self._seen.token_ids)}

    def _start(self, sample: torch.Tensor, context: torch.Tensor | None) -> None:
        """Make the plan, create the run and its arrays (first U-Net call)."""
        sched = self.pipe.scheduler
        batch = int(sample.shape[0])
        cfg = bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        n_guidance = 2 if cfg and batch % 2 == 0 else 1
        latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        plan = RecordingPlan.build(
            self.unet, self.options, latent_hw=latent_hw, total_steps=executed_steps(sched),
            n_images=batch // n_guidance, n_guidance=n_guidance,
            n_tokens=int(context.shape[1]) if context is not None else token_length(self.pipe),
            selection=self.selection,
        )
        self.plan = plan
        self._started = (time.perf_counter(), self._writer().waited_seconds)
        # what may wait for the writer (its queue admits one call over the bound when empty), plus the
        # call being captured: past the first calls, a recording allocates no host memory
        call = max((plan.call_bytes(s) for s in plan.record_steps), default=0)
        self.buffers.fit(max(self._writer().max_queue_bytes, call) + call)
        self._capture = Capture(_TORCH_DTYPES[self.options.dtype], n_guidance, plan.n_images, buffers=self.buffers)
        vae_sf = int(getattr(self.pipe, "vae_scale_factor", 8))
        attrs = replace(
            self.attrs,
            steps=plan.total_steps,
            num_inference_steps=int(sched.num_inference_steps),
            scheduler=type(sched).__name__,
            scheduler_config=jsonable(dict(sched.config)),
            n_images=plan.n_images,
            guidance=schema.GUIDANCE_LABELS if n_guidance == 2 else schema.GUIDANCE_LABELS[1:],
            latent_size=latent_hw,
            height=latent_hw[0] * vae_sf,
            width=latent_hw[1] * vae_sf,
            record_steps=format_ints(plan.record_steps),
            recorded_blocks=plan.blocks,
            inputs=self.options.inputs,
            dtype=self.options.store_dtype,
            attention_layers=tuple(lp.layer.name for lp in plan.layers),
            tokens=self._tokens() or self.attrs.tokens,  # A1111 conditioning: encoded before the run
        )
        writer = self._writer()
        writer.set_block_table(plan.table)
        writer.begin_run(self.run_name, attrs, [plan.block(b) for b in plan.blocks], which=plan.which,
                         dtype=self.options.store_dtype)
        if self._attn is not None:
            self._attn.use(plan.layers)
            writer.add_arrays(self.run_name, {
                (lp.layer.name, f): (schema.ATTENTION_FEATURES[f], (plan.n_images, n_guidance, *lp.shape(f)),
                                     self.options.store_dtype, {"layer": lp.layer.name}, lp.attrs(f))
                for lp in plan.layers for f in lp.features
            })
        self._bar = tqdm(total=plan.total_steps, desc=f"record {self.run_name}", unit="step", file=sys.stderr,
                         disable=not self.progress)


def wait_line(run: str, waited: float, took: float) -> str:
    """The line a recording ends with: how long its U-Net waited on the writer (a full queue: the disk is slower).

    Examples
    --------
    >>> wait_line("main", 0.5, 10.0)
    'record main: waited 0.50 s on the store writer (5.0% of 10.00 s)'
    """
    share = 100 * waited / took if took > 0 else 0.0
    return f"record {run}: waited {waited:.2f} s on the store writer ({share:.1f}% of {took:.2f} s)"


def record(
    pipe: Any,
    path: str | Path,
    *,
    blocks: str = "",
    steps: str = "",
    attention: AttentionOptions | str | None = "qk",
    inputs: bool = False,
    dtype: str = "fp16",
    run: str = "main",
    run_info: Mapping[str, Any] | None = None,
    model_info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_queue_bytes: int = 1 << 30,
) -> Recorder:
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
        Cross-attention features (``"qk"``, ``"qk,k,vqk"``; ``None`` or ``"none"`` = no attention),
        or an :class:`~dumpunet.recorder.attention_layers.AttentionOptions` for block filters and
        self-attention.
    inputs
        Also store each block's input.
    dtype
        ``"fp16"`` (default) or ``"fp32"`` for stored activations.
    run
        The run's name in the store (``runs/<run>``).
    run_info
        JSON metadata for the run: the generation parameters of the run's attributes (``prompt``,
        ``seed``, ...; see :class:`~dumpunet.store.schema.RunAttrs`) and any other keys, kept as given.
    model_info
        Extra JSON metadata for the model (the root ``model`` attribute; the CLI fills it).
    overwrite
        Replace an existing dumpunet store at ``path``.
    progress
        Show a progress bar on stderr.
    max_queue_bytes
        How many captured bytes may wait for the writer before the U-Net waits for it.

    Examples
    --------
    >>> with dumpunet.record(pipe, "out.zarr", blocks="IN00-OUT11", steps="1-20") as rec:  # doctest: +SKIP
    ...     image = pipe("a cute girl", num_inference_steps=20).images[0]
    """
    if isinstance(attention, str) or attention is None:
        features = AttentionOptions.parse_features(attention or "")
        attention = AttentionOptions(features=features) if features else None
    options = RecordOptions(blocks=blocks, steps=steps, inputs=inputs, dtype=dtype, attention=attention)
    attrs = schema.RunAttrs.from_json(jsonable(dict(run_info or {})), "run_info")
    return Recorder(pipe, path, options=options, run=run, attrs=attrs, model_info=model_info, progress=progress,
                    overwrite=overwrite, max_queue_bytes=max_queue_bytes)

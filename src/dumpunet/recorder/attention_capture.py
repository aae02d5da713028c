"""Capture attention maps by wrapping whatever attention processor each layer has.

The wrapper calls the layer's own processor and returns its output untouched, so the image
stays bit-identical. What is stored is computed on the side from the query and key projections,
which forward hooks on ``to_q``/``to_k`` hand over as the processor computes them (nothing is
projected twice): ``qk`` = softmax(q·kᵀ·scale) per head (or the heads' mean, accumulated in
float32 on the U-Net's device), ``k`` = the keys per head, ``vqk`` = the per-head attention
output, taken from the input of ``to_out[0]``. Kept tokens (``--attention-tokens``) are cut
from ``qk`` after the softmax over every token, and from ``k``, before the copy off the device.

Which layers exist and which are kept: :mod:`.attention_layers`; their shapes: :mod:`.plan`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from dumpunet.errors import RecordError
from dumpunet.recorder.attention_layers import ONE_SHOT_BYTES, AttentionLayer
from dumpunet.recorder.plan import LayerPlan
from dumpunet.recorder.processors import ProcessorWrapper, wrap_processors

Sink = Callable[[str, str, torch.Tensor], None]
"""Receives (layer name, feature, tensor [batch, head, ...]) once per layer call."""


class _CaptureWrapper(ProcessorWrapper):
    """Runs the original processor and reports what the capture hooks saw."""

    def __init__(self, inner: Any, capture: AttentionCapture, path: str) -> None:
        super().__init__(inner)
        self._capture = capture
        self._path = path

    def run(self, attn: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        cap = self._capture
        plan = cap.plans[self._path]
        active = cap.is_active(plan)
        cap.stash.clear()
        cap.listening = active
        try:
            out = self.inner(attn, hidden_states, *args, **kwargs)
        finally:
            cap.listening = False
        if active:
            cap.report(attn, plan)
        return out


class AttentionCapture:
    """Install processor wrappers and projection hooks on attention layers; remove them on exit.

    ``features`` names the layers and what each stores; the layers' plans
    (:class:`~dumpunet.recorder.plan.LayerPlan`, which need the latent size) are handed over
    with :meth:`use` before the first U-Net call runs.
    """

    def __init__(
        self,
        unet: nn.Module,
        features: Mapping[AttentionLayer, tuple[str, ...]],
        sink: Sink,
        is_active: Callable[[LayerPlan], bool],
        *,
        one_shot_bytes: int,
    ) -> None:
        self.unet = unet
        self.features = {layer.module: f for layer, f in features.items()}
        self._names = {layer.module: layer.name for layer in features}
        self.plans: dict[str, LayerPlan] = {}
        self.sink = sink
        self.is_active = is_active
        self.one_shot_bytes = one_shot_bytes
        self.listening = False
        self.stash: dict[str, torch.Tensor] = {}
        self._restore: Callable[[], None] | None = None
        self._scratch: dict[tuple[Any, ...], torch.Tensor] = {}  # score buffers, reused every call
        self._indices: dict[tuple[str, str, torch.device], torch.Tensor] = {}  # kept queries and tokens
        self._handles: list[Any] = []

    def use(self, plans: Iterable[LayerPlan]) -> None:
        """Take the plans of the installed layers."""
        self.plans = {p.layer.module: p for p in plans}
        assert set(self.plans) == set(self.features), "the attention plan names other layers than the installed ones"

    def install(self) -> None:
        mods = dict(self.unet.named_modules())
        for path, features in self.features.items():
            attn = mods[path]
            if getattr(attn, "fused_projections", False):
                raise RecordError(f"{self._names[path]}: fused QKV projections hide q and k; call unfuse_qkv_projections() first")
            self._handles.append(attn.to_q.register_forward_hook(self._stasher("q")))
            self._handles.append(attn.to_k.register_forward_hook(self._stasher("k")))
            if "vqk" in features:
                self._handles.append(attn.to_out[0].register_forward_pre_hook(self._pre_stasher("vqk")))
        self._restore = wrap_processors(
            self.unet, {path: functools.partial(_CaptureWrapper, capture=self, path=path) for path in self.features}
        )

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        if self._restore is not None:
            self._restore()
            self._restore = None

    def _stasher(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if self.listening:
                self.stash[name] = output

        return hook

    def _pre_stasher(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.listening:
                self.stash[name] = args[0]

        return hook

    def report(self, attn: nn.Module, plan: LayerPlan) -> None:
        """Compute the planned features from the stashed projections and hand them to the sink."""
        q, k = self.stash.get("q"), self.stash.get("k")
        if q is None or k is None:
            raise RecordError(f"{plan.layer.name}: the processor did not use to_q/to_k; its attention cannot be recorded")
        heads = int(attn.heads)
        b = q.shape[0]
        hd = k.shape[-1] // heads
        qh = q.reshape(b, -1, heads, hd).transpose(1, 2)
        kh = k.reshape(b, -1, heads, hd).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            qh = attn.norm_q(qh)
        if getattr(attn, "norm_k", None) is not None:
            kh = attn.norm_k(kh)
        name = plan.layer.name
        index = self._index(plan, q.device)
        tokens = self._tokens(plan, q.device)
        if "qk" in plan.features:
            probs = attention_probs(qh, kh, float(attn.scale), index, plan.head_mean,
                                    scratch=self._scratch, one_shot_bytes=self.one_shot_bytes)
            self.sink(name, "qk", probs if tokens is None else probs.index_select(-1, tokens))  # softmax over every token first
        if "k" in plan.features:
            self.sink(name, "k", kh if tokens is None else kh.index_select(2, tokens))
        if "vqk" in plan.features:
            v = self.stash["vqk"].reshape(b, -1, heads, hd).transpose(1, 2)
            if index is not None:
                v = v[:, :, index.to(v.device)]
            self.sink(name, "vqk", v)

    def _index(self, plan: LayerPlan, device: torch.device) -> torch.Tensor | None:
        return self._on_device("query", plan.query_index, plan, device)

    def _tokens(self, plan: LayerPlan, device: torch.device) -> torch.Tensor | None:
        return self._on_device("token", plan.token_index, plan, device)

    def _on_device(self, what: str, index: tuple[int, ...] | None, plan: LayerPlan, device: torch.device) -> torch.Tensor | None:
        """``index`` as a tensor on ``device``, made once per layer and device (None: keep everything)."""
        if index is None:
            return None
        key = (what, plan.layer.module, device)
        if key not in self._indices:
            self._indices[key] = torch.tensor(index, dtype=torch.long, device=device)
        return self._indices[key]


def _softmax_into(p: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
    """``p`` = softmax(q·kᵀ·scale) over the last axis, computed in place in ``p`` (float32).

    torch's own softmax, in place: one fused pass instead of four (max, subtract and exp, sum,
    divide), which took 4-12x as long on the CPU (docs/benchmarks.md, issue 14).
    """
    torch.matmul(q, k.transpose(-1, -2), out=p)
    p.mul_(scale)
    torch.softmax(p, dim=-1, out=p)


def _buffer(scratch: dict[tuple[Any, ...], torch.Tensor] | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    key = (*shape, device)
    p = scratch.get(key) if scratch is not None else None
    if p is None:
        p = torch.empty(shape, dtype=torch.float32, device=device)
        if scratch is not None:
            scratch[key] = p
    return p


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    query_index: torch.Tensor | None = None,
    head_mean: bool = False,
    *,
    scratch: dict[tuple[Any, ...], torch.Tensor] | None = None,
    one_shot_bytes: int = ONE_SHOT_BYTES,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale) in float32, per head; optionally only some queries, or averaged over heads.

    Scores up to ``one_shot_bytes`` (cross-attention) are computed for all heads in one batched
    matmul, in place in a buffer from ``scratch`` that is reused on every call (fresh buffers
    cost page faults every call); larger ones (full self-attention maps, 4096² per head at 512²)
    one head at a time, so that no more than one head's scores exist in float32 at once. Both
    branches run the same float32 operations on each head (matmul, scale, softmax over each
    row; the head mean adds heads in order, then divides), so on the CPU they give
    bit-identical maps (tested); on a GPU, cuBLAS may pick another matmul kernel for another
    batch count, which can move a probability by a rounding step (measured: up to 6e-8).
    """
    if query_index is not None:
        q = q[:, :, query_index.to(q.device)]
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    qf, kf = q.float(), k.float()
    out: torch.Tensor
    if b * h * nq * nk * 4 <= one_shot_bytes:
        p = _buffer(scratch, (b, h, nq, nk), q.device)
        _softmax_into(p, qf, kf, scale)
        if not head_mean:
            return p
        out = p[:, :1].clone()
        for i in range(1, h):
            out[:, 0] += p[:, i]
        return out.div_(h)
    out = torch.empty((b, 1 if head_mean else h, nq, nk), dtype=torch.float32, device=q.device)
    p = _buffer(scratch, (b, nq, nk), q.device)
    for i in range(h):
        _softmax_into(p, qf[:, i], kf[:, i], scale)
        if not head_mean:
            out[:, i] = p
        elif i == 0:
            out[:, 0] = p
        else:
            out[:, 0] += p
    return out.div_(h) if head_mean else out

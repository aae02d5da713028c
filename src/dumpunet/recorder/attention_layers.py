"""Which attention layers a U-Net has and which of them a recording keeps (no hooks here).

Layer names follow the blocks: ``IN01.attn2`` (cross-attention), ``OUT05.attn1``
(self-attention); a block that holds several transformer blocks (SDXL) numbers them:
``IN04.attn2.0``, ``IN04.attn2.1``. :mod:`.plan` turns the selected layers into shapes,
:mod:`.attention_capture` records them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from dumpunet.errors import OptionError
from dumpunet.layouts import BlockUnit
from dumpunet.recorder.blocks import select_blocks
from dumpunet.specs import INT_ITEM, check_ints, parse_ints

FEATURES = ("qk", "k", "vqk")

ONE_SHOT_BYTES = 64 << 20
"""Default: score tensors up to this size are computed for all heads at once; larger ones head by head."""


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module of the U-Net, named after its block."""

    name: str
    block: str
    module: str
    cross: bool

    @property
    def kind(self) -> str:
        return "attn2" if self.cross else "attn1"


def _is_attention(module: nn.Module) -> bool:
    return hasattr(module, "to_q") and hasattr(module, "to_k") and hasattr(module, "heads") and hasattr(module, "processor")


def attention_layers(unet: nn.Module, units: Sequence[BlockUnit]) -> list[AttentionLayer]:
    """Return every attention layer of the U-Net in execution order, named after its block."""
    mods = dict(unet.named_modules())
    layers: list[AttentionLayer] = []
    for unit in units:
        found: list[tuple[str, bool]] = []
        for root in unit.modules:
            for sub, m in mods[root].named_modules():
                if _is_attention(m):
                    found.append((f"{root}.{sub}", bool(getattr(m, "is_cross_attention", False))))
        n_self = sum(1 for _, cross in found if not cross)
        n_cross = sum(1 for _, cross in found if cross)
        counters = {True: 0, False: 0}
        for path, cross in found:
            kind = "attn2" if cross else "attn1"
            many = (n_cross if cross else n_self) > 1
            name = f"{unit.name}.{kind}.{counters[cross]}" if many else f"{unit.name}.{kind}"
            counters[cross] += 1
            layers.append(AttentionLayer(name, unit.name, path, cross))
    return layers


@dataclass(frozen=True)
class AttentionOptions:
    """Which attention maps to record.

    Cross-attention (``attn2``) layers record ``features`` in every recorded step: their ``qk``
    with every head or the heads' mean (``heads="mean"``), and their ``qk`` and ``k`` for every
    token or only the token positions ``tokens`` names (``"1-8"``, ``"1,4,5"``: the index grammar
    of the analyzer's ``--tokens``, :func:`~dumpunet.specs.parse_ints`). Self-attention
    (``attn1``, ``[head, HW, HW]``: 4096² per head at 512²) is opt-in and filtered: by block
    (``self_blocks``), by step (``self_steps``), head-averaged (``self_heads="mean"``), and/or only
    for query pixels in ``query_region`` (fractions ``x0, y0, x1, y1`` of the image) at a stride.
    """

    features: tuple[str, ...] = ("qk",)
    blocks: str = ""
    heads: str = "all"  # cross-attention qk: "all", or "mean" (computed on the device, in float32)
    tokens: str = ""  # cross-attention qk and k: the token positions kept (index spec); empty = all
    self_attention: bool = False
    self_blocks: str = ""
    self_steps: str = ""
    self_heads: str = "all"
    query_stride: int = 1
    query_region: tuple[float, float, float, float] | None = None
    one_shot_bytes: int = ONE_SHOT_BYTES  # larger score tensors are computed head by head (same values)

    def __post_init__(self) -> None:
        bad = [f for f in self.features if f not in FEATURES]
        if bad:
            raise OptionError(f"unknown attention feature {bad[0]!r}; choose from {', '.join(FEATURES)}")
        for flag, value in (("attention", self.heads), ("self-attention", self.self_heads)):
            if value not in ("all", "mean"):
                raise OptionError(f"{flag} heads must be 'all' or 'mean', got {value!r}")
        if self.tokens.strip():
            check_token_positions(self.tokens)
        if self.query_stride < 1:
            raise OptionError(f"query stride must be at least 1, got {self.query_stride}")
        if self.query_region is not None:
            x0, y0, x1, y1 = self.query_region
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise OptionError(f"query region {self.query_region} must be fractions 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")

    @classmethod
    def parse_features(cls, text: str) -> tuple[str, ...]:
        """``"qk,k"`` -> ``("qk", "k")``; ``""`` or ``"none"`` -> ``()``; UI names Q*K, K, V*Q*K accepted."""
        names = {"qk": "qk", "q*k": "qk", "q·k": "qk", "k": "k", "vqk": "vqk", "v*q*k": "vqk", "v·q·k": "vqk"}
        out: list[str] = []
        for part in text.split(","):
            p = part.strip().lower()
            if not p or p == "none":
                continue
            if p not in names:
                raise OptionError(f"unknown attention feature {part.strip()!r}; choose from qk, k, vqk (or none)")
            if names[p] not in out:
                out.append(names[p])
        return tuple(out)


def check_token_positions(spec: str) -> None:
    """Refuse an ``--attention-tokens`` spec that is not token positions, with a message naming the bad part.

    Words of the prompt are not taken: one recording writes one token axis for every run,
    image and guidance half, whose prompts put a word at different positions.

    >>> check_token_positions("1-8, 12")
    >>> check_token_positions("1,girl")
    Traceback (most recent call last):
    ...
    dumpunet.errors.OptionError: --attention-tokens takes token positions such as 1-8 or 1,4,5 (as attention grids label them: 5:girl), not words: 'girl'
    """
    words = [p.strip() for p in spec.split(",") if p.strip() and not INT_ITEM.match(p)]
    if words:
        raise OptionError(f"--attention-tokens takes token positions such as 1-8 or 1,4,5 (as attention grids label "
                          f"them: 5:girl), not words: {words[0]!r}")
    check_ints(spec, 0, noun="token", what="--attention-tokens")


def kept_tokens(spec: str, n_tokens: int) -> tuple[int, ...] | None:
    """The token positions an ``--attention-tokens`` spec keeps of ``n_tokens`` keys, ascending; None = all.

    >>> kept_tokens("3,1-2", 77), kept_tokens("", 77)
    ((1, 2, 3), None)
    """
    if not spec.strip():
        return None
    check_token_positions(spec)
    return tuple(sorted(set(parse_ints(spec, 0, n_tokens - 1, noun="token", what="--attention-tokens"))))


def query_grid(hw: tuple[int, int], region: tuple[float, float, float, float] | None, stride: int) -> tuple[list[int], list[int]]:
    """Rows and columns of the query pixels kept at a layer of spatial size ``hw`` (at least one each)."""
    h, w = hw
    x0, y0, x1, y1 = region or (0.0, 0.0, 1.0, 1.0)

    def span(lo: float, hi: float, n: int) -> list[int]:
        a = min(int(math.floor(lo * n)), n - 1)
        b = max(a + 1, min(n, int(math.ceil(hi * n))))
        return list(range(a, b, stride))

    return span(y0, y1, h), span(x0, x1, w)


def select_layers(unet: nn.Module, units: Sequence[BlockUnit], opts: AttentionOptions) -> list[AttentionLayer]:
    """The layers ``opts`` asks for, in execution order (block specs checked against ``units``)."""
    cross = set(select_blocks(list(units), opts.blocks, what="attention block spec")) if opts.features else set()
    own: set[str] = set()
    if opts.self_attention:
        if opts.self_steps.strip():
            check_ints(opts.self_steps, 1, noun="step", what="self-attention step spec")
        own = set(select_blocks(list(units), opts.self_blocks, what="self-attention block spec"))
    every = attention_layers(unet, units)
    for spec, flag, blocks, is_cross in ((opts.blocks, "--attention-blocks", cross, True),
                                         (opts.self_blocks, "--self-attention-blocks", own, False)):
        if spec.strip() and blocks and not any(layer.block in blocks for layer in every if layer.cross == is_cross):
            kind = "cross-attention" if is_cross else "self-attention"
            having = sorted({layer.block for layer in every if layer.cross == is_cross}, key=[u.name for u in units].index)
            raise OptionError(f"{flag} {spec.strip()!r} selects no block with {kind}; blocks with it: "
                              f"{', '.join(having) or 'none'}")
    return [layer for layer in every if layer.block in (cross if layer.cross else own)]

"""Built-in block layouts of the supported U-Net families, without torch.

A layout is the ordered block list, the diffusers modules of each block and which blocks have
cross-attention (where a prompt can act). ``dumpunet explain`` uses it to show per-block prompts
before any model is loaded. The rules are those of :func:`dumpunet.recorder.blocks.unet_blocks`
applied to each family's published ``down_block_types`` / ``up_block_types``; a test ties the
two for the embedded tiny models.

======================  ==============================================================
``sd1``, ``sd2``,       25 blocks IN00-OUT11; no cross-attention in IN00 (conv_in), IN03,
``tiny-sd1``            IN06, IN09 (downsamplers), IN10, IN11, OUT00-OUT02 (plain resnets)
``sdxl``, ``tiny-sdxl`` 19 blocks IN00-OUT08; no cross-attention in IN00 (conv_in),
                        IN01-IN02 (the first down block has no attention), IN03, IN06
                        (downsamplers), OUT06-OUT08 (the last up block has no attention)
======================  ==============================================================

Examples
--------
>>> sd1 = builtin_layout("sd1")
>>> sd1.modules["IN01"]
('down_blocks.0.resnets.0', 'down_blocks.0.attentions.0')
>>> [b for b in sd1.blocks if b not in sd1.cross_attention]
['IN00', 'IN03', 'IN06', 'IN09', 'IN10', 'IN11', 'OUT00', 'OUT01', 'OUT02']
>>> sd1.aliases["mid_block"]
'M00'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from dumpunet.errors import ModelError

__all__ = ["BUILTIN_LAYOUTS", "BlockLayout", "builtin_layout"]


class _BlockRow(Protocol):
    """What :meth:`BlockLayout.from_block_table` reads from a store's block table row."""

    name: str
    modules: tuple[str, ...]
    cross_attention: bool


@dataclass(frozen=True)
class BlockLayout:
    """The blocks of one U-Net family: order, modules, cross-attention."""

    name: str
    blocks: tuple[str, ...]
    modules: Mapping[str, tuple[str, ...]]  # block -> diffusers modules, in call order
    cross_attention: frozenset[str]  # blocks holding at least one cross-attention layer

    @property
    def aliases(self) -> dict[str, str]:
        """Module path -> block name, the alias table :func:`dumpunet.specs.resolve_block` takes."""
        out: dict[str, str] = {}
        for b in self.blocks:
            for m in self.modules.get(b, ()):
                out.setdefault(m, b)
        return out

    @classmethod
    def from_block_table(cls, name: str, rows: Iterable[_BlockRow]) -> BlockLayout:
        """Build a layout from a store's block table (``dumpunet.open(path).block_table``)."""
        rows = list(rows)
        return cls(
            name=name,
            blocks=tuple(r.name for r in rows),
            modules=MappingProxyType({r.name: tuple(r.modules) for r in rows}),
            cross_attention=frozenset(r.name for r in rows if r.cross_attention),
        )


@dataclass(frozen=True)
class _Stage:
    """One diffusers down or up block, as far as the block table cares."""

    resnets: int
    attention: bool  # Cross-attention transformer after each resnet (CrossAttn*Block2D)
    resample: bool  # a downsampler / upsampler (diffusers: every stage but the last)


def _layout(name: str, down: Sequence[_Stage], up: Sequence[_Stage]) -> BlockLayout:
    # Same rules as recorder/blocks.py: conv_in; per down block one block per resnet (+attention),
    # then the downsampler; the mid block; per up block one block per resnet (+attention), the
    # upsampler joining the last one.
    rows: list[tuple[str, tuple[str, ...], bool]] = [("IN00", ("conv_in",), False)]
    for d, st in enumerate(down):
        for j in range(st.resnets):
            mods = (f"down_blocks.{d}.resnets.{j}",) + ((f"down_blocks.{d}.attentions.{j}",) if st.attention else ())
            rows.append((f"IN{len(rows):02d}", mods, st.attention))
        if st.resample:
            rows.append((f"IN{len(rows):02d}", (f"down_blocks.{d}.downsamplers.0",), False))
    n_in = len(rows)
    rows.append(("M00", ("mid_block",), True))
    for u, st in enumerate(up):
        for j in range(st.resnets):
            mods = (f"up_blocks.{u}.resnets.{j}",) + ((f"up_blocks.{u}.attentions.{j}",) if st.attention else ())
            if st.resample and j == st.resnets - 1:
                mods += (f"up_blocks.{u}.upsamplers.0",)
            rows.append((f"OUT{len(rows) - n_in - 1:02d}", mods, st.attention))
    return BlockLayout(
        name=name,
        blocks=tuple(r[0] for r in rows),
        modules=MappingProxyType({r[0]: r[1] for r in rows}),
        cross_attention=frozenset(r[0] for r in rows if r[2]),
    )


def _sd1(name: str) -> BlockLayout:
    # down: CrossAttnDownBlock2D x3, DownBlock2D; up: UpBlock2D, CrossAttnUpBlock2D x3
    down = [_Stage(2, True, True)] * 3 + [_Stage(2, False, False)]
    up = [_Stage(3, False, True)] + [_Stage(3, True, True)] * 2 + [_Stage(3, True, False)]
    return _layout(name, down, up)


def _sdxl(name: str) -> BlockLayout:
    # down: DownBlock2D, CrossAttnDownBlock2D x2; up: CrossAttnUpBlock2D x2, UpBlock2D
    down = [_Stage(2, False, True), _Stage(2, True, True), _Stage(2, True, False)]
    up = [_Stage(3, True, True), _Stage(3, True, True), _Stage(3, False, False)]
    return _layout(name, down, up)


BUILTIN_LAYOUTS: Mapping[str, BlockLayout] = MappingProxyType(
    {
        "sd1": _sd1("sd1"),
        "sd2": _sd1("sd2"),
        "tiny-sd1": _sd1("tiny-sd1"),
        "sdxl": _sdxl("sdxl"),
        "tiny-sdxl": _sdxl("tiny-sdxl"),
    }
)


def builtin_layout(name: str) -> BlockLayout:
    """Return the built-in layout called ``name`` (see :data:`BUILTIN_LAYOUTS` for the names).

    >>> len(builtin_layout("sdxl").blocks), builtin_layout("sdxl").blocks[9]
    (19, 'M00')
    """
    try:
        return BUILTIN_LAYOUTS[name]
    except KeyError:
        raise ModelError(f"no built-in block layout {name!r} (choose from {', '.join(BUILTIN_LAYOUTS)})") from None

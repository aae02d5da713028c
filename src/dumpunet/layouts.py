"""The block rule of a U-Net (IN00..., M00, OUT00...) and the built-in layouts, without torch.

One rule, :func:`block_units`, turns a plain description of a U-Net's stages
(:class:`UNetStructure`) into its blocks. The recorder describes a loaded torch U-Net with it
(:func:`dumpunet.recorder.blocks.unet_structure`); ``dumpunet explain`` describes each supported
family from its published ``down_block_types`` / ``up_block_types`` (:data:`BUILTIN_STRUCTURES`),
so both read the same rule. The rule (SD1: 25 blocks, SDXL: 19):

- ``IN00`` is ``conv_in``;
- per down block, one IN block per (resnet, attention) layer, then one per downsampler;
- ``M00`` is the mid block;
- per up block, one OUT block per (resnet, attention) layer; the up block's upsampler belongs
  to its last OUT block, so that block's output is the upsampled tensor.

A layout is the ordered block list, the diffusers modules of each block and which blocks have
cross-attention (where a prompt can act).

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
>>> units = block_units(UNetStructure(down=(Stage(1, (True,), 1), Stage(1)), mid_cross=True, up=(Stage(2, (), 1), Stage(2, (True, True)))))
>>> [(u.name, u.modules[-1]) for u in units]  # doctest: +NORMALIZE_WHITESPACE
[('IN00', 'conv_in'), ('IN01', 'down_blocks.0.attentions.0'), ('IN02', 'down_blocks.0.downsamplers.0'),
 ('IN03', 'down_blocks.1.resnets.0'), ('M00', 'mid_block'), ('OUT00', 'up_blocks.0.resnets.0'),
 ('OUT01', 'up_blocks.0.upsamplers.0'), ('OUT02', 'up_blocks.1.attentions.0'), ('OUT03', 'up_blocks.1.attentions.1')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from dumpunet.errors import ModelError

__all__ = ["BUILTIN_LAYOUTS", "BUILTIN_STRUCTURES", "BlockLayout", "BlockUnit", "Stage", "UNetStructure", "block_units", "builtin_layout"]


class _BlockRow(Protocol):
    """What :meth:`BlockLayout.from_block_table` reads from a row (a store's BlockInfo, a BlockUnit)."""

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
        """Build a layout from a store's block table (``dumpunet.open(path).block_table``) or :func:`block_units`."""
        rows = list(rows)
        return cls(
            name=name,
            blocks=tuple(r.name for r in rows),
            modules=MappingProxyType({r.name: tuple(r.modules) for r in rows}),
            cross_attention=frozenset(r.name for r in rows if r.cross_attention),
        )


@dataclass(frozen=True)
class Stage:
    """One diffusers down or up block, as far as the block rule cares."""

    resnets: int
    attentions: tuple[bool, ...] = ()  # one per attention module (after resnet j): holds cross-attention?
    resamplers: int = 0  # downsamplers / upsamplers (diffusers: one in every stage but the last)


@dataclass(frozen=True)
class UNetStructure:
    """The stages of a ``UNet2DConditionModel``: what :func:`block_units` reads."""

    down: tuple[Stage, ...]
    mid_cross: bool  # the mid block holds cross-attention
    up: tuple[Stage, ...]


@dataclass(frozen=True)
class BlockUnit:
    """One block: its name and the diffusers modules that make it up, in call order."""

    name: str
    modules: tuple[str, ...]
    cross_attention: bool

    @property
    def output_module(self) -> str:
        return self.modules[-1]

    @property
    def input_module(self) -> str:
        return self.modules[0]


def block_units(structure: UNetStructure) -> tuple[BlockUnit, ...]:
    """Apply the block rule (see the module docstring) to a U-Net's stages, in execution order."""

    def layers(kind: str, i: int, st: Stage) -> list[tuple[list[str], bool]]:
        out = []
        for j in range(st.resnets):
            mods = [f"{kind}.{i}.resnets.{j}"]
            cross = False
            if j < len(st.attentions):
                mods.append(f"{kind}.{i}.attentions.{j}")
                cross = st.attentions[j]
            out.append((mods, cross))
        return out

    units = [BlockUnit("IN00", ("conv_in",), False)]
    for d, st in enumerate(structure.down):
        for mods, cross in layers("down_blocks", d, st):
            units.append(BlockUnit(f"IN{len(units):02d}", tuple(mods), cross))
        for j in range(st.resamplers):
            units.append(BlockUnit(f"IN{len(units):02d}", (f"down_blocks.{d}.downsamplers.{j}",), False))
    n_in = len(units)
    units.append(BlockUnit("M00", ("mid_block",), structure.mid_cross))
    for u, st in enumerate(structure.up):
        rows = layers("up_blocks", u, st)
        if rows:
            rows[-1][0].extend(f"up_blocks.{u}.upsamplers.{k}" for k in range(st.resamplers))
        for mods, cross in rows:
            units.append(BlockUnit(f"OUT{len(units) - n_in - 1:02d}", tuple(mods), cross))
    return tuple(units)


def _sd1() -> UNetStructure:
    # down: CrossAttnDownBlock2D x3, DownBlock2D; up: UpBlock2D, CrossAttnUpBlock2D x3
    cross2, cross3 = Stage(2, (True,) * 2, 1), Stage(3, (True,) * 3, 1)
    return UNetStructure(
        down=(cross2, cross2, cross2, Stage(2)), mid_cross=True, up=(Stage(3, (), 1), cross3, cross3, Stage(3, (True,) * 3))
    )


def _sdxl() -> UNetStructure:
    # down: DownBlock2D, CrossAttnDownBlock2D x2; up: CrossAttnUpBlock2D x2, UpBlock2D
    return UNetStructure(
        down=(Stage(2, (), 1), Stage(2, (True,) * 2, 1), Stage(2, (True,) * 2)),
        mid_cross=True,
        up=(Stage(3, (True,) * 3, 1), Stage(3, (True,) * 3, 1), Stage(3)),
    )


BUILTIN_STRUCTURES: Mapping[str, UNetStructure] = MappingProxyType(
    {"sd1": _sd1(), "sd2": _sd1(), "tiny-sd1": _sd1(), "sdxl": _sdxl(), "tiny-sdxl": _sdxl()}
)
"""The stages of each supported family; a test ties the tiny ones to the loaded models."""

BUILTIN_LAYOUTS: Mapping[str, BlockLayout] = MappingProxyType(
    {name: BlockLayout.from_block_table(name, block_units(s)) for name, s in BUILTIN_STRUCTURES.items()}
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

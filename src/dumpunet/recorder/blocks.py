"""The block table (IN00..., M00, OUT00...) of a loaded diffusers U-Net, with shapes.

The block rule itself lives torch-free in :func:`dumpunet.layouts.block_units`; this module
describes a torch U-Net's stages for it (:func:`unet_structure`) and derives each block's input
and output shapes. A block's output is what its last module returns; its input is what its
first module receives (for OUT blocks that is the hidden state after the skip connection is
concatenated).

Examples
--------
For SD1.5 at 512x512: ``IN01`` = ``down_blocks.0.resnets.0`` + ``down_blocks.0.attentions.0``,
output 320x64x64; ``IN03`` = ``down_blocks.0.downsamplers.0``, 320x32x32; ``OUT02`` =
``up_blocks.0.resnets.2`` + ``up_blocks.0.upsamplers.0``, 1280x16x16; ``OUT11`` 320x64x64.
"""

from __future__ import annotations

from torch import nn

from dumpunet.layouts import BlockUnit, Stage, UNetStructure, block_units
from dumpunet.specs import parse_blocks
from dumpunet.store.schema import BlockInfo

__all__ = ["BlockUnit", "block_table", "select_blocks", "unet_blocks", "unet_structure"]


def _has_cross_attention(module: nn.Module | None) -> bool:
    if module is None:
        return False
    return any(getattr(m, "is_cross_attention", False) for m in module.modules())


def _stage(block: nn.Module, resamplers: str) -> Stage:
    attns = getattr(block, "attentions", None) or []
    return Stage(
        resnets=len(block.resnets),
        attentions=tuple(_has_cross_attention(a) for a in attns),
        resamplers=len(getattr(block, resamplers, None) or []),
    )


def unet_structure(unet: nn.Module) -> UNetStructure:
    """Describe a ``UNet2DConditionModel``-like U-Net's stages for :func:`dumpunet.layouts.block_units`."""
    return UNetStructure(
        down=tuple(_stage(d, "downsamplers") for d in unet.down_blocks),
        mid_cross=_has_cross_attention(unet.mid_block),
        up=tuple(_stage(u, "upsamplers") for u in unet.up_blocks),
    )


def unet_blocks(unet: nn.Module) -> list[BlockUnit]:
    """Return the block table of a ``UNet2DConditionModel``-like U-Net, in execution order."""
    return list(block_units(unet_structure(unet)))


def block_table(unet: nn.Module, latent_hw: tuple[int, int]) -> list[BlockInfo]:
    """Return the block table with input/output shapes ``(C, H, W)`` for a latent of ``latent_hw``.

    Shapes are derived from the modules' channel attributes and the down/upsampling structure,
    without running the model (the recorder checks them against the tensors it sees).
    """
    units = unet_blocks(unet)
    mods = dict(unet.named_modules())
    h, w = latent_hw
    skips: list[tuple[int, int]] = []  # spatial size of every IN output, as the U-Net stacks them
    shapes: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {}
    for unit in units:
        first, last = mods[unit.input_module], mods[unit.output_module]
        if unit.name == "IN00":
            c_in, c_out = int(unet.config.in_channels), first.out_channels
        elif unit.name == "M00":
            c_in, c_out = first.resnets[0].in_channels, first.resnets[-1].out_channels
        elif ".downsamplers." in unit.input_module:
            c_in, c_out = first.channels, first.out_channels
        else:
            c_in, c_out = first.in_channels, last.out_channels
        in_shape = (c_in, h, w)
        if unit.name.startswith("IN"):
            if ".downsamplers." in unit.output_module:
                h, w = _downsampled(first, h, w)
            skips.append((h, w))
        elif unit.name.startswith("OUT"):
            skips.pop()
            if ".upsamplers." in unit.output_module and skips:
                # diffusers upsamples to the size of the next skip connection
                h, w = skips[-1]
        shapes[unit.name] = (in_shape, (c_out, h, w))
    return [
        BlockInfo(
            name=u.name,
            module=u.output_module,
            modules=u.modules,
            input_module=u.input_module,
            output_shape=shapes[u.name][1],
            input_shape=shapes[u.name][0],
            cross_attention=u.cross_attention,
        )
        for u in units
    ]


def _downsampled(module: nn.Module, h: int, w: int) -> tuple[int, int]:
    """Spatial size after a diffusers ``Downsample2D`` (3x3 stride-2 conv, or 2x2 average pool)."""
    if getattr(module, "use_conv", True) and getattr(module, "padding", 1) == 1:
        return (h + 1) // 2, (w + 1) // 2
    return h // 2, w // 2


def select_blocks(units: list[BlockUnit], spec: str, *, what: str = "block spec") -> list[str]:
    """Blocks a spec selects, in U-Net order; module paths work as aliases; ``none`` selects none."""
    if spec.strip().lower() == "none":
        return []
    names = [u.name for u in units]
    return parse_blocks(spec, names, aliases={m: u.name for u in units for m in u.modules}, what=what)

"""Build tiny LoRA and textual-inversion files for the embedded tiny models, in code.

LoRAs come in the two layouts users bring: kohya's (A1111, Civitai: ``lora_unet_...`` /
``lora_te_...`` with ``lora_down``/``lora_up``/``alpha``) and diffusers'/peft's
(``unet.<module>.lora_A.weight``). Their shapes are read off the pipeline they are made for, so
a file made for tiny-sdxl does not fit tiny-sd1, as a real SDXL LoRA does not fit SD1.5.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
TE_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
RANK = 4


def _linears(module: Any, suffixes: tuple[str, ...]) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in module.named_modules() if n.endswith(suffixes) and isinstance(m, torch.nn.Linear)]


def _pair(m: Any, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, m.in_features, generator=gen) * 0.3
    up = torch.randn(m.out_features, RANK, generator=gen) * 0.3
    return down, up


def _encoders(pipe: Any) -> list[tuple[str, str, Any]]:
    """(kohya prefix, diffusers prefix, module) of each text encoder."""
    if getattr(pipe, "text_encoder_2", None) is None:
        return [("lora_te_", "text_encoder", pipe.text_encoder)]
    return [("lora_te1_", "text_encoder", pipe.text_encoder), ("lora_te2_", "text_encoder_2", pipe.text_encoder_2)]


def _te_path(name: str) -> str:
    # kohya names text encoder layers as transformers 4 did: text_model.encoder.layers.N...
    return name if name.startswith("text_model.") else "text_model." + name


def _sgm(name: str, layers_per_block: int) -> str:
    """The original (SGM) U-Net name of a diffusers attention module, as kohya writes SDXL LoRAs."""
    per = layers_per_block + 1  # each down block: its layers, then a downsampler
    if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", name):
        return f"input_blocks.{1 + per * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", name):
        return f"output_blocks.{per * int(m[1]) + int(m[2])}.1.{m[3]}"
    raise ValueError(name)


def kohya_lora(pipe: Any, path: Path, *, seed: int = 0, sgm: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write a kohya-format LoRA for ``pipe``'s U-Net attention and text encoder attention.

    ``sgm=True`` names U-Net modules the original way (``input_blocks_4_1_...``), as kohya's SDXL
    LoRAs do; otherwise by diffusers' names (``down_blocks_1_attentions_0_...``), as its SD1 ones.
    """
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, m in _linears(pipe.unet, UNET_TARGETS):
        name = _sgm(name, pipe.unet.config.layers_per_block) if sgm else name
        key = "lora_unet_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = _pair(m, gen)
        sd[f"{key}.alpha"] = torch.tensor(float(RANK) / 2)
    for prefix, _, encoder in _encoders(pipe):
        for name, m in _linears(encoder, TE_TARGETS):
            key = prefix + _te_path(name).replace(".", "_")
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = _pair(m, gen)
            sd[f"{key}.alpha"] = torch.tensor(float(RANK))
    save_file(sd, str(path), metadata=metadata)
    return path


def peft_lora(pipe: Any, path: Path, *, seed: int = 1) -> Path:
    """Write a diffusers/peft-format LoRA (``unet.<module>.lora_A.weight`` ...) for ``pipe``."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, m in _linears(pipe.unet, UNET_TARGETS):
        sd[f"unet.{name}.lora_A.weight"], sd[f"unet.{name}.lora_B.weight"] = _pair(m, gen)
    for _, prefix, encoder in _encoders(pipe):
        for name, m in _linears(encoder, TE_TARGETS):
            sd[f"{prefix}.{_te_path(name)}.lora_A.weight"], sd[f"{prefix}.{_te_path(name)}.lora_B.weight"] = _pair(m, gen)
    save_file(sd, str(path))
    return path


def embedding_vectors(width: int, n: int = 1, *, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def a1111_embedding(path: Path, vectors: torch.Tensor) -> Path:
    """Write an A1111 ``.pt`` embedding (``string_to_param`` with the ``*`` vectors)."""
    torch.save({"string_to_param": {"*": vectors}, "name": path.stem, "step": 0,
                "sd_checkpoint": None, "sd_checkpoint_name": None}, path)
    return path


def diffusers_embedding(path: Path, vectors: torch.Tensor) -> Path:
    """Write a diffusers-format ``.safetensors`` embedding (one tensor under the token's name)."""
    save_file({path.stem: vectors.contiguous()}, str(path))
    return path


def sdxl_embedding(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    """Write an SDXL embedding (``clip_l`` and ``clip_g`` vectors)."""
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path

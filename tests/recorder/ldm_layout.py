"""Original (LDM/A1111) key names for SD1-layout diffusers weights, to build single-file checkpoints in tests."""

from __future__ import annotations

import json
import re

import torch

from dumpunet.recorder.checkpoints import CONFIGS

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str) -> str:
    part, leaf = rest.rsplit(".", 1)
    return f"{_RESNET[part]}.{leaf}"


def _ldm_unet_key(key: str) -> str:
    """Name an SD1-layout diffusers U-Net weight the way CompVis' ``openaimodel.py`` does."""
    head, leaf = key.rsplit(".", 1)
    if head in _UNET_FIXED:
        return f"{_UNET_FIXED[head]}.{leaf}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", key):
        n = 3 * int(m[1]) + int(m[3]) + 1
        return f"input_blocks.{n}.0.{_resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{n}.1.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{3 * int(m[1]) + 3}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", key):
        return f"middle_block.{2 * int(m[2])}.{_resnet(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", key):
        n = 3 * int(m[1]) + int(m[3])
        return f"output_blocks.{n}.0.{_resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{n}.1.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.(.+)", key):
        i = int(m[1])
        return f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.{m[2]}"
    raise KeyError(key)


def _ldm_vae_key(key: str, n_up: int) -> str:
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"down_blocks\.(\d)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"down_blocks\.(\d)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"up_blocks\.(\d)\.resnets\.", lambda m: f"up.{n_up - 1 - int(m[1])}.block.", key)
    key = re.sub(r"up_blocks\.(\d)\.upsamplers\.0\.", lambda m: f"up.{n_up - 1 - int(m[1])}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        key = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    return key


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """Return tiny-sd1's weights under the key names of an original SD1 ``.ckpt``."""
    out = {f"model.diffusion_model.{_ldm_unet_key(k)}": v for k, v in pipe.unet.state_dict().items()}
    n_up = len(pipe.vae.decoder.up_blocks)
    for k, v in pipe.vae.state_dict().items():
        nk = _ldm_vae_key(k, n_up)
        # the original VAE's mid attention uses 1x1 convolutions where diffusers uses linears
        out[f"first_stage_model.{nk}"] = v[:, :, None, None] if ".attn_1." in nk and v.ndim == 2 else v
    for k, v in pipe.text_encoder.state_dict().items():
        out[f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}"] = v
    return {k: v.contiguous() for k, v in out.items()}


def _meta_parts(folder: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = CONFIGS / folder
    with torch.device("meta"):
        return _Parts(
            unet=UNet2DConditionModel.from_config(json.loads((root / "unet" / "config.json").read_text())),
            vae=AutoencoderKL.from_config(json.loads((root / "vae" / "config.json").read_text())),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_json_file(root / "text_encoder" / "config.json")),
        )


def sd1_ldm_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of a full-size SD1.5 checkpoint in A1111's layout (no weights)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in ldm_state_dict(_meta_parts("sd1")).items()}


def sd2_ldm_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of a full-size SD2.x checkpoint: SD1's U-Net and VAE layout, OpenCLIP ViT-H text.

    SD2's U-Net keys are named as SD1's (its transformers' linear projections only change shapes);
    the text encoder is OpenCLIP's, all 24 layers (diffusers drops the last, SD2 reads the penultimate).
    """
    parts = _meta_parts("sd2")
    parts.text_encoder = torch.nn.Module()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ldm_state_dict(parts).items()}
    p = "cond_stage_model.model."
    for i in range(24):
        r = f"{p}transformer.resblocks.{i}."
        shapes.update({
            r + "attn.in_proj_weight": (3072, 1024), r + "attn.in_proj_bias": (3072,),
            r + "attn.out_proj.weight": (1024, 1024), r + "attn.out_proj.bias": (1024,),
            r + "ln_1.weight": (1024,), r + "ln_1.bias": (1024,), r + "ln_2.weight": (1024,), r + "ln_2.bias": (1024,),
            r + "mlp.c_fc.weight": (4096, 1024), r + "mlp.c_fc.bias": (4096,),
            r + "mlp.c_proj.weight": (1024, 4096), r + "mlp.c_proj.bias": (1024,),
        })
    shapes.update({p + "token_embedding.weight": (49408, 1024), p + "positional_embedding": (77, 1024),
                   p + "ln_final.weight": (1024,), p + "ln_final.bias": (1024,), p + "text_projection": (1024, 1024),
                   p + "logit_scale": ()})
    return shapes


def write_random_checkpoint(path, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
    """Write fp16 weights ~ N(0, 0.02) under ``shapes``' names, with the extras a real A1111 checkpoint carries."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    weights = {k: torch.randn(s, generator=gen, dtype=torch.float16).mul_(0.02) for k, s in shapes.items()}
    weights["alphas_cumprod"] = torch.linspace(0.9991, 0.0047, 1000)  # diffusion schedule buffers sit beside
    weights["model_ema.decay"] = torch.tensor(0.9999)
    if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
        weights["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(weights, path)


class _Parts:
    def __init__(self, **parts):
        self.__dict__.update(parts)

"""Build the embedded default models ``tiny-sd1`` and ``tiny-sdxl`` in code, without downloads.

They keep the real block layout (25 blocks IN00-OUT11 for SD1, 19 blocks IN00-OUT08 for SDXL),
the real attention wiring (self- and cross-attention, SDXL's two text encoders, its
``text_time`` added conditioning and blocks holding two transformer blocks), the real VAE
downscale factor 8 and the real scheduler configurations, with a few channels per layer and
random weights from a fixed seed. Their images are noise; their recordings have the shapes,
names and token positions of a real run, in a fraction of a second on a CPU.

Weights come from ``torch.manual_seed(TINY_SEED)`` inside ``torch.random.fork_rng``, so they
are the same in every call and process, and the caller's random state is left untouched.

Examples
--------
>>> pipe = build_tiny_pipeline("tiny-sd1")
>>> image = pipe("a cute girl", num_inference_steps=2, output_type="np").images[0]
>>> image.shape
(256, 256, 3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dumpunet.errors import ModelError
from dumpunet.recorder.tokenizer import tiny_tokenizer

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = ["TINY_DEFAULT_SIZE", "TINY_MODELS", "TINY_SEED", "build_tiny_pipeline"]

TINY_MODELS: tuple[str, ...] = ("tiny-sd1", "tiny-sdxl")
TINY_DEFAULT_SIZE = 256
"""Default image side in pixels: latent 32x32, so the deepest blocks still show 4x4 maps."""
TINY_SEED = 20240229

_LATENT_SIZE = TINY_DEFAULT_SIZE // 8

# The schedulers the real checkpoints ship with (SD1.5: PNDM/PLMS; SDXL base: Euler).
_SD1_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
_SDXL_SCHEDULER: dict[str, Any] = {
    **_SD1_SCHEDULER,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}


def _text_config(tokenizer: Any, *, hidden: int, act: str, proj: int) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=3,  # SD "clip skip" and SDXL read the penultimate layer
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        projection_dim=proj,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # the pooled output is read at the first EOS
        pad_token_id=tokenizer.pad_token_id,
    )


def _text_encoder(cls: Any, config: Any) -> Any:
    """A text encoder whose final layer norm has a trained-looking gain and bias.

    With the default gain 1 and bias 0 every output token has mean 0 to rounding, and A1111's
    emphasis rescale (original mean / weighted mean) would divide rounding noise by rounding
    noise: factors of any size or sign, machine-dependent, NaN images. Real CLIP's final norm
    has a learned bias, so the mean is a real number; these values come from their own generator
    so that every other weight stays as the shared seed draws it.
    """
    import torch

    model = cls(config)
    norm = getattr(model, "text_model", model).final_layer_norm
    gen = torch.Generator().manual_seed(TINY_SEED + 1)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(norm.weight.shape, generator=gen))
        norm.bias.copy_(0.5 + 0.1 * torch.randn(norm.bias.shape, generator=gen))
    return model


def _vae(scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    # Four blocks give three downsamplers: the real factor 8 between image and latent.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_DEFAULT_SIZE,
        scaling_factor=scaling_factor,
    )


def _sd1_components() -> dict[str, Any]:
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_tokenizer()
    text_encoder = _text_encoder(CLIPTextModel, _text_config(tokenizer, hidden=32, act="quick_gelu", proj=32))
    # SD1.5's unet config with channels (320, 640, 1280, 1280) / 40 and 8 heads -> 2 heads.
    # diffusers' `attention_head_dim` is the number of heads for this model family.
    unet = UNet2DConditionModel(
        sample_size=_LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=2,
        attention_head_dim=2,
        cross_attention_dim=32,
        norm_num_groups=4,
    )
    return {
        "unet": unet,
        "vae": _vae(0.18215),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": PNDMScheduler.from_config(_SD1_SCHEDULER),
    }


def _sdxl_components() -> dict[str, Any]:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_tokenizer(pad_token="!")  # SDXL's OpenCLIP tokenizer pads with "!"
    # SDXL pairs CLIP ViT-L (quick_gelu) with OpenCLIP bigG (gelu, projected pooled output)
    text_encoder = _text_encoder(CLIPTextModel, _text_config(tokenizer, hidden=32, act="quick_gelu", proj=32))
    text_encoder_2 = _text_encoder(CLIPTextModelWithProjection, _text_config(tokenizer_2, hidden=64, act="gelu", proj=32))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=_LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 32),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 2),  # real SDXL: (1, 2, 10)
        attention_head_dim=(2, 2, 4),  # heads, as in SDXL's (5, 10, 20)
        use_linear_projection=True,
        cross_attention_dim=32 + 64,  # the two encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # six size/crop numbers, each embedded in `time_dim`, plus the pooled text projection
        projection_class_embeddings_input_dim=6 * time_dim + 32,
        norm_num_groups=4,
    )
    return {
        "unet": unet,
        "vae": _vae(0.13025),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": EulerDiscreteScheduler.from_config(_SDXL_SCHEDULER),
    }


def build_tiny_pipeline(name: str, *, img2img: bool = False) -> DiffusionPipeline:
    """Build a new pipeline for the embedded model ``name`` (one of :data:`TINY_MODELS`).

    Every call builds new modules (a few milliseconds) so that hooks and attention processors
    installed on one pipeline never reach another; the weights are identical in every call.
    ``img2img=True`` returns the Img2Img pipeline class with the same weights.

    Examples
    --------
    >>> pipe = build_tiny_pipeline("tiny-sdxl", img2img=True)
    >>> type(pipe).__name__, len(pipe.unet.down_blocks)
    ('StableDiffusionXLImg2ImgPipeline', 3)
    """
    import torch

    key = name.lower()
    if key not in TINY_MODELS:
        raise ModelError(f"unknown embedded model {name!r}; choose one of {', '.join(TINY_MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        components = _sd1_components() if key == "tiny-sd1" else _sdxl_components()
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()

    if key == "tiny-sd1":
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
        return cls(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline
    return cls(**components, add_watermarker=False)

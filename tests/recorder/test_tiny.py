"""The embedded tiny models: real block layout, fixed weights, deterministic images."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dumpunet.errors import ModelError  # noqa: E402
from dumpunet.recorder.tiny import TINY_DEFAULT_SIZE, TINY_MODELS, build_tiny_pipeline  # noqa: E402
from dumpunet.specs import SD1_BLOCKS, SDXL_BLOCKS  # noqa: E402

pytestmark = pytest.mark.recorder

EXPECTED_BLOCKS = {"tiny-sd1": len(SD1_BLOCKS), "tiny-sdxl": len(SDXL_BLOCKS)}


def community_block_count(unet) -> int:
    """Count IN blocks (conv_in, each resnet, each downsampler), M00, and OUT blocks (each up resnet)."""
    n_in = 1 + sum(len(b.resnets) + len(b.downsamplers or []) for b in unet.down_blocks)
    n_out = sum(len(b.resnets) for b in unet.up_blocks)
    return n_in + 1 + n_out


def generate(pipe, *, seed: int = 0, steps: int = 2, **kw):
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    return pipe("a cute girl, pink hair", num_inference_steps=steps, generator=gen, output_type="np", **kw).images[0]


def state_dicts(pipe) -> dict[str, dict]:
    return {n: m.state_dict() for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


@pytest.mark.parametrize("name", TINY_MODELS)
def test_block_layout_is_the_real_one(name):
    unet = build_tiny_pipeline(name).unet
    assert community_block_count(unet) == EXPECTED_BLOCKS[name]


def test_sd1_layout_details():
    pipe = build_tiny_pipeline("tiny-sd1")
    unet = pipe.unet
    assert [type(b).__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    assert (attn.attn1.heads, attn.attn2.heads) == (2, 2)
    assert unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert (pipe.vae_scale_factor, pipe.vae.config.latent_channels) == (8, 4)
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)


def test_sdxl_layout_details():
    pipe = build_tiny_pipeline("tiny-sdxl")
    unet = pipe.unet
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2
    assert [len(a.transformer_blocks) for b in unet.down_blocks[1:] for a in b.attentions] == [2, 2, 2, 2]
    assert len(unet.mid_block.attentions[0].transformer_blocks) == 2
    hidden = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.config.cross_attention_dim == hidden
    assert unet.config.addition_embed_type == "text_time"
    assert unet.config.projection_class_embeddings_input_dim == (
        6 * unet.config.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    )
    assert (pipe.tokenizer.pad_token, pipe.tokenizer_2.pad_token) == ("<|endoftext|>", "!")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_two_builds_have_identical_weights_in_separate_modules(name):
    a, b = build_tiny_pipeline(name), build_tiny_pipeline(name)
    sa, sb = state_dicts(a), state_dicts(b)
    assert sa.keys() == sb.keys()
    for comp in sa:
        assert sa[comp].keys() == sb[comp].keys()
        assert all(torch.equal(sa[comp][k], sb[comp][k]) for k in sa[comp]), comp
    assert a.unet is not b.unet and a.tokenizer is not b.tokenizer


def test_building_leaves_the_callers_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    build_tiny_pipeline("tiny-sd1")
    assert torch.equal(torch.rand(4), expected)


def test_hooks_on_one_pipeline_do_not_reach_another():
    first = build_tiny_pipeline("tiny-sd1")
    calls = []
    first.unet.mid_block.register_forward_hook(lambda *args: calls.append(1))
    generate(build_tiny_pipeline("tiny-sd1"), steps=1)
    assert calls == []
    generate(first, steps=2)
    # prompt and negative prompt share one batched U-Net call per scheduler timestep
    assert len(calls) == len(first.scheduler.timesteps) > 0


@pytest.mark.parametrize("name", TINY_MODELS)
def test_images_are_deterministic_per_seed(name):
    a = generate(build_tiny_pipeline(name), seed=3)
    b = generate(build_tiny_pipeline(name), seed=3)
    c = generate(build_tiny_pipeline(name), seed=4)
    assert a.shape == (TINY_DEFAULT_SIZE, TINY_DEFAULT_SIZE, 3)  # the default size needs no height/width
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.05 < float(a.std()) < 0.5  # noise, but not a flat or saturated picture


@pytest.mark.parametrize("name", TINY_MODELS)
def test_larger_images_work(name):
    image = generate(build_tiny_pipeline(name), height=128, width=96, steps=1)
    assert image.shape == (128, 96, 3)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_img2img_shares_the_weights(name):
    txt, img = build_tiny_pipeline(name), build_tiny_pipeline(name, img2img=True)
    assert type(img).__name__.endswith("Img2ImgPipeline")
    st, si = state_dicts(txt), state_dicts(img)
    assert all(torch.equal(st["unet"][k], si["unet"][k]) for k in st["unet"])
    init = generate(txt)
    out = generate(img, image=init, strength=0.5, steps=4)
    again = generate(build_tiny_pipeline(name, img2img=True), image=init, strength=0.5, steps=4)
    assert out.shape == init.shape
    assert np.array_equal(out, again)


def test_unknown_name_lists_the_embedded_models():
    with pytest.raises(ModelError) as err:
        build_tiny_pipeline("tiny-sd3")
    assert str(err.value) == "unknown embedded model 'tiny-sd3'; choose one of tiny-sd1, tiny-sdxl"

"""Single-file checkpoints offline: architecture detection, prediction type, hashes, shipped configs, a full-size SD1.5.

Every test runs with HF_HUB_OFFLINE=1 and an empty Hugging Face cache (tests/recorder/conftest.py):
whatever loads here loads without the network.
"""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from dumpunet.errors import ModelError  # noqa: E402
from dumpunet.recorder.checkpoints import (  # noqa: E402
    CONFIGS,
    _as_v_prediction,
    check_shipped_shapes,
    detect,
    file_hashes,
    predicts_v,
    prediction_type,
)
from dumpunet.recorder.models import load_pipeline  # noqa: E402
from ldm_layout import _ldm_unet_key, _ldm_vae_key, sd1_ldm_shapes, sd2_ldm_shapes, write_random_checkpoint  # noqa: E402,E501

pytestmark = pytest.mark.recorder

U = "model.diffusion_model."
VAE = {"first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3), "first_stage_model.decoder.conv_out.bias": (3,)}
SD2 = {
    U + "input_blocks.0.0.weight": (320, 4, 3, 3),
    U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    U + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 1024),
    "cond_stage_model.model.token_embedding.weight": (49408, 1024),
    "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024),
    "cond_stage_model.model.ln_final.weight": (1024,),
    **VAE,
}
SDXL = {
    U + "input_blocks.0.0.weight": (320, 4, 3, 3),
    U + "label_emb.0.0.weight": (1280, 2816),
    U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
    U + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 2048),
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    "conditioner.embedders.1.model.ln_final.weight": (1280,),
    "conditioner.embedders.1.model.text_projection": (1280, 1280),
    **VAE,
}
REFINER = {
    U + "input_blocks.0.0.weight": (384, 4, 3, 3),
    U + "label_emb.0.0.weight": (1536, 2560),
    U + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1536, 1280),
    "conditioner.embedders.0.model.ln_final.weight": (1280,),
    **VAE,
}
NO_ARCH = "matches no architecture dumpunet loads (SD1.x, SD2.x and SDXL base text-to-image checkpoints): it has a "


@pytest.fixture(scope="module")
def sd1_shapes():
    return sd1_ldm_shapes()


# --- detection from key/shape lists -------------------------------------------------------------------


def test_full_size_layouts_are_detected_and_fit_the_shipped_configs(sd1_shapes):
    for arch, shapes in (("sd1", sd1_shapes), ("sd2", SD2), ("sdxl", SDXL)):
        assert detect("m.safetensors", shapes) == arch
        check_shipped_shapes("m.safetensors", arch, shapes)  # no error: the shipped config fits


def test_sd1_layout_has_the_published_size(sd1_shapes):
    # SD1.5: U-Net 859,520,964 parameters, VAE 83,653,863, CLIP ViT-L text 123,060,480 (+77 position ids)
    count = {p: sum(torch.Size(s).numel() for k, s in sd1_shapes.items() if k.startswith(p))
             for p in (U, "first_stage_model.", "cond_stage_model.")}
    assert count == {U: 859_520_964, "first_stage_model.": 83_653_863, "cond_stage_model.": 123_060_480}


@pytest.mark.parametrize(
    ("folder", "sizes"),
    [
        ("sd1", {"unet": 859_520_964, "text_encoder": 123_060_480}),
        ("sd2", {"unet": 865_910_724, "text_encoder": 340_387_840}),
        ("sdxl", {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840}),
    ],
)
def test_shipped_configs_build_the_published_model_sizes(folder, sizes):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = CONFIGS / folder
    got = {}
    with torch.device("meta"):
        got["unet"] = UNet2DConditionModel.from_config(json.loads((root / "unet" / "config.json").read_text()))
        got["vae"] = AutoencoderKL.from_config(json.loads((root / "vae" / "config.json").read_text()))
        for name in ("text_encoder", "text_encoder_2"):
            if (root / name).is_dir():
                cfg = CLIPTextConfig.from_json_file(root / name / "config.json")
                cls = CLIPTextModelWithProjection if cfg.architectures == ["CLIPTextModelWithProjection"] else CLIPTextModel
                got[name] = cls(cfg)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in got.items()}
    assert counts == {**sizes, "vae": 83_653_863}


def test_sd2_v_differs_from_sd2_base_only_in_size_attention_upcast_and_scheduler():
    def load(name, part, file="config.json"):
        return json.loads((CONFIGS / name / part / file).read_text())

    base, v = load("sd2", "unet"), load("sd2-v", "unet")
    assert {k for k in base if base[k] != v[k]} == {"sample_size", "upcast_attention"}
    assert (v["sample_size"], v["upcast_attention"], base["sample_size"]) == (96, True, 64)
    assert load("sd2-v", "scheduler", "scheduler_config.json")["prediction_type"] == "v_prediction"
    assert load("sd2", "scheduler", "scheduler_config.json")["prediction_type"] == "epsilon"
    for part in ("text_encoder", "tokenizer"):
        name = "config.json" if part == "text_encoder" else "tokenizer_config.json"
        assert load("sd2", part, name) == load("sd2-v", part, name)


@pytest.mark.parametrize(
    ("shapes", "found"),
    [
        ({**SD2, U + "input_blocks.0.0.weight": (320, 9, 3, 3)},
         "U-Net (9 input channels, 1024-wide cross-attention), VAE, OpenCLIP ViT-H text encoder (SD2); "
         "a U-Net with 9 input channels is an inpainting model"),
        ({**SDXL, U + "input_blocks.0.0.weight": (320, 8, 3, 3)},
         "U-Net (8 input channels, 2048-wide cross-attention, SDXL size conditioning), VAE, CLIP ViT-L text encoder "
         "(SDXL), OpenCLIP ViT-bigG text encoder (SDXL); a U-Net with 8 input channels is an instruct-pix2pix model"),
        (REFINER,
         "U-Net (4 input channels, 1280-wide cross-attention, SDXL size conditioning), VAE, OpenCLIP ViT-bigG text "
         "encoder alone (SDXL refiner); the SDXL refiner is not supported"),
        ({U + "input_blocks.0.0.weight": (320, 4, 3, 3), "cond_stage_model.roberta.embeddings.word_embeddings.weight": (1, 1)},
         "U-Net (4 input channels, no cross-attention), XLM-RoBERTa text encoder (AltDiffusion); no text encoder of SD1 "
         "(cond_stage_model.transformer.*), SD2 (cond_stage_model.model.*) or SDXL"),
        ({k: s for k, s in SD2.items() if k.startswith(U)},
         "U-Net (4 input channels, 1024-wide cross-attention); no text encoder of SD1 (cond_stage_model.transformer.*), "
         "SD2 (cond_stage_model.model.*) or SDXL"),
    ],
    ids=["inpainting", "pix2pix", "refiner", "altdiffusion", "unet-only"],
)
def test_unknown_architectures_name_what_was_found(shapes, found):
    with pytest.raises(ModelError) as err:
        detect("m.safetensors", shapes)
    assert str(err.value) == f"m.safetensors {NO_ARCH}{found}"


def test_an_unknown_checkpoint_file_is_one_error_before_any_loading(tmp_path):
    path = tmp_path / "inpaint.safetensors"
    save_file({k: torch.zeros(s[:1]) if k != U + "input_blocks.0.0.weight" else torch.zeros(320, 9, 1, 1)
               for k, s in SD2.items()}, path)
    with pytest.raises(ModelError) as err:
        load_pipeline(str(path))
    assert str(err.value).startswith(f"{path} {NO_ARCH}U-Net (9 input channels")
    assert "\n" not in str(err.value)


# --- prediction type ----------------------------------------------------------------------------------


def test_prediction_type_order(tmp_path):
    path = tmp_path / "m.safetensors"
    assert prediction_type(path, SDXL, "sdxl") == ("epsilon", "default")
    assert prediction_type(path, SD2, "sd2") == (None, "A1111's SD2 test")
    assert prediction_type(path, {**SDXL, "v_pred": (0,)}, "sdxl") == ("v_prediction", "v_pred key")
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert prediction_type(path, SD2, "sd2") == ("v_prediction", "m.yaml beside the checkpoint")
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert prediction_type(path, SD2, "sd2") == ("epsilon", "m.yaml beside the checkpoint")
    path.with_suffix(".yaml").write_text("model: [a, list]\n")
    assert prediction_type(path, {**SD2, "v_pred": (0,)}, "sd2") == ("epsilon", "m.yaml beside the checkpoint")
    assert prediction_type(path, SD2, "sd2", "v_prediction") == ("v_prediction", "option")


def test_bad_prediction_inputs(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ModelError) as err:
        prediction_type(path, SD2, "sd2", "v")
    assert str(err.value) == "prediction type must be one of epsilon, v_prediction, got 'v'"
    path.with_suffix(".yaml").write_text("model: [unclosed\n")
    with pytest.raises(ModelError) as err:
        prediction_type(path, SD2, "sd2")
    assert str(err.value).startswith(f"cannot read {path.with_suffix('.yaml')}, the checkpoint's A1111 config beside it: ")


@pytest.mark.parametrize(("bias", "expected"), [(-2.0, True), (0.0, False)])
def test_a1111_sd2_test_reads_the_unet_output(bias, expected):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, attention_head_dim=2,
        cross_attention_dim=16, norm_num_groups=4,
    )
    with torch.no_grad():  # output = bias everywhere: mean(output - 0.5) = bias - 0.5, v when below -1
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(bias)
    assert predicts_v(unet) is expected


def test_sd2_rebuilt_as_v_prediction_keeps_every_tensor():
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dumpunet.recorder.tokenizer import tiny_tokenizer

    root = CONFIGS / "sd2"
    with torch.device("meta"):  # full size, no memory
        unet = UNet2DConditionModel.from_config(json.loads((root / "unet" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((root / "vae" / "config.json").read_text()))
        text = CLIPTextModel(CLIPTextConfig.from_json_file(root / "text_encoder" / "config.json"))
    scheduler = PNDMScheduler.from_config(json.loads((root / "scheduler" / "scheduler_config.json").read_text()))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    v = _as_v_prediction(pipe)
    assert (v.unet.config.sample_size, v.unet.config.upcast_attention) == (96, True)
    assert (type(v.scheduler).__name__, v.scheduler.config.prediction_type) == ("DDIMScheduler", "v_prediction")
    assert v.vae is vae and v.text_encoder is text
    before, after = unet.state_dict(), v.unet.state_dict()
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)


# --- hashes -------------------------------------------------------------------------------------------


def test_file_hashes_are_a1111s(tmp_path):
    path = tmp_path / "m.safetensors"
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB
    path.write_bytes(data)
    full = hashlib.sha256(data).hexdigest()
    assert file_hashes(path) == {
        "file_sha256": full,
        "a1111_shorthash": full[:10],
        "a1111_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
    }


# --- a full-size SD1.5 checkpoint in A1111's layout, random weights ----------------------------------


def _stored(path):
    from safetensors import safe_open

    return safe_open(str(path), framework="pt")


@pytest.mark.slow
def test_full_size_sd15_checkpoint_loads_offline_without_config(tmp_path, sd1_shapes, offline_hub):
    path = tmp_path / "random-sd15.safetensors"
    write_random_checkpoint(path, sd1_shapes, seed=15)  # 2.1 GB
    pipe, meta = load_pipeline(str(path), torch_dtype=torch.float16)
    assert list(offline_hub.iterdir()) == []  # the (empty, offline) Hugging Face cache was not needed nor filled
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta == {
        "name": "random-sd15", "source": "single-file", "path": str(path.resolve()), "architecture": "sd1",
        "config": "dumpunet:sd1", "prediction_type": "epsilon", "prediction_type_from": "default",
        "file_sha256": digest, "a1111_shorthash": digest[:10], "a1111_legacy_hash": meta["a1111_legacy_hash"],
        "pipeline": "StableDiffusionPipeline",
    }
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    # every weight arrived where the original key says, bit for bit
    with _stored(path) as f:
        for k, v in pipe.unet.state_dict().items():
            assert torch.equal(v, f.get_tensor(U + _ldm_unet_key(k))), k
        n_up = len(pipe.vae.decoder.up_blocks)
        for k, v in pipe.vae.state_dict().items():
            assert torch.equal(v, f.get_tensor("first_stage_model." + _ldm_vae_key(k, n_up)).reshape(v.shape)), k
        for k, v in pipe.text_encoder.state_dict().items():
            ref = f.get_tensor("cond_stage_model.transformer.text_model." + k.removeprefix("text_model."))
            assert torch.equal(v, ref), k
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (pipe.tokenizer.pad_token, len(pipe.tokenizer)) == ("<|endoftext|>", 49408)
    assert (pipe.unet.config.sample_size, pipe.scheduler.config.prediction_type) == (64, "epsilon")


@pytest.mark.slow
def test_full_size_sd2_768v_checkpoint_loads_offline_with_a1111s_yaml(tmp_path):
    path = tmp_path / "random-sd21-768v.safetensors"
    write_random_checkpoint(path, sd2_ldm_shapes(), seed=21)  # 2.6 GB
    path.with_suffix(".yaml").write_text('model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n'
                                         '  params:\n    parameterization: "v"\n')
    pipe, meta = load_pipeline(str(path), torch_dtype=torch.float16)
    assert (meta["architecture"], meta["config"], meta["prediction_type"], meta["prediction_type_from"]) == (
        "sd2", "dumpunet:sd2-v", "v_prediction", "random-sd21-768v.yaml beside the checkpoint")
    assert (pipe.unet.config.sample_size, pipe.unet.config.upcast_attention) == (96, True)
    assert (type(pipe.scheduler).__name__, pipe.scheduler.config.prediction_type) == ("DDIMScheduler", "v_prediction")
    assert (pipe.tokenizer.pad_token_id, pipe.text_encoder.config.num_hidden_layers) == (0, 23)  # SD2 pads with "!"
    with _stored(path) as f:
        p = "cond_stage_model.model."
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight, f.get_tensor(p + "token_embedding.weight"))
        q, k, v = f.get_tensor(p + "transformer.resblocks.22.attn.in_proj_weight").chunk(3)
        text = {name.removeprefix("text_model."): t for name, t in pipe.text_encoder.state_dict().items()}
        assert torch.equal(text["encoder.layers.22.self_attn.q_proj.weight"], q)
        assert torch.equal(text["encoder.layers.22.self_attn.v_proj.weight"], v)
        for key, value in pipe.unet.state_dict().items():
            assert torch.equal(value, f.get_tensor(U + _ldm_unet_key(key))), key


def test_prediction_type_option_is_checked_and_only_for_checkpoints(tmp_path):
    from dumpunet.errors import OptionError
    from dumpunet.recorder.request import RecordRequest

    with pytest.raises(OptionError) as err:
        RecordRequest(out=tmp_path / "s.zarr", prediction_type="v")
    assert str(err.value) == "--prediction-type must be one of epsilon, v_prediction, got 'v'"
    with pytest.raises(ModelError) as err:
        load_pipeline("tiny-sd1", prediction_type="v_prediction")
    assert str(err.value) == "prediction_type= applies to .safetensors/.ckpt checkpoints only, not to tiny-sd1"


def test_cli_unknown_architecture_and_misplaced_prediction_type_are_one_line_and_no_store(tmp_path):
    from click.testing import CliRunner

    from dumpunet.cli import main

    path = tmp_path / "refiner.safetensors"
    save_file({k: torch.zeros(1) for k in REFINER}, path)
    out = tmp_path / "o.zarr"
    res = CliRunner().invoke(main, ["record", "--model", str(path), "--out", str(out)])
    assert (res.exit_code, res.output.count("\n")) == (1, 1)
    assert res.output.startswith(f"Error: {path} {NO_ARCH}U-Net (no input convolution, no cross-attention, SDXL size")
    assert res.output.rstrip().endswith("; the SDXL refiner is not supported")
    res = CliRunner().invoke(main, ["record", "--prediction-type", "v_prediction", "--out", str(out)])
    assert (res.exit_code, res.output) == (
        1, "Error: prediction_type= applies to .safetensors/.ckpt checkpoints only, not to tiny-sd1\n")
    assert not out.exists()

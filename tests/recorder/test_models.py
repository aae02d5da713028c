"""load_pipeline: embedded, diffusers folder, single file, hub cache, and every refusal."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from dumpunet.errors import ModelError, OptionError  # noqa: E402
from dumpunet.recorder.models import load_pipeline  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402
from ldm_layout import ldm_state_dict  # noqa: E402

pytestmark = pytest.mark.recorder

NO_MODEL = "(expected a diffusers folder, a .safetensors/.ckpt file, tiny-sd1/tiny-sdxl or a hub id)"


def generate(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(5)
    return pipe("a cute girl, pink hair", num_inference_steps=2, generator=gen, output_type="np").images[0]


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd1-diffusers"
    build_tiny_pipeline("tiny-sd1").save_pretrained(folder)
    return folder


# --- an original-layout (LDM) checkpoint of tiny-sd1, to test single-file loading ---------------


@pytest.fixture(scope="module")
def sd1_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    weights = ldm_state_dict(build_tiny_pipeline("tiny-sd1"))
    save_file(weights, folder / "tiny.safetensors")
    torch.save({"state_dict": weights}, folder / "tiny.ckpt")
    return folder


# --- loading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "img2img", "expected"),
    [
        ("tiny-sd1", False, ("tiny-sd1", "sd1", "StableDiffusionPipeline")),
        ("TINY-SDXL", True, ("tiny-sdxl", "sdxl", "StableDiffusionXLImg2ImgPipeline")),
    ],
)
def test_embedded_models(model, img2img, expected):
    pipe, meta = load_pipeline(model, img2img=img2img)
    name, arch, cls = expected
    assert meta == {"name": name, "source": "embedded", "path": None, "architecture": arch, "pipeline": cls}
    assert type(pipe).__name__ == cls


def test_embedded_model_in_another_dtype():
    pipe, _ = load_pipeline("tiny-sd1", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_diffusers_folder_reproduces_the_in_memory_image(tmp_path, name):
    original = build_tiny_pipeline(name)
    original.save_pretrained(tmp_path / name)
    pipe, meta = load_pipeline(str(tmp_path / name))
    arch = name.removeprefix("tiny-")
    cls = "StableDiffusionXLPipeline" if arch == "sdxl" else "StableDiffusionPipeline"
    assert meta == {"name": name, "source": "diffusers-folder", "path": str((tmp_path / name).resolve()),
                    "architecture": arch, "pipeline": cls}
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if hasattr(original, component):
            loaded, built = getattr(pipe, component).state_dict(), getattr(original, component).state_dict()
            assert loaded.keys() == built.keys()
            assert all(torch.equal(loaded[k], built[k]) for k in built), component
    # Same weights, same image up to float rounding: weights read from a safetensors file can sit at
    # other memory alignments than freshly built ones, and the CPU BLAS then picks other kernels
    # (seen: SDXL's text projection differs by 3e-7 with bit-equal weights and inputs).
    np.testing.assert_allclose(generate(pipe), generate(original), rtol=0, atol=1e-4)


def test_diffusers_folder_as_img2img(sd1_folder):
    pipe, meta = load_pipeline(str(sd1_folder), img2img=True)
    assert (type(pipe).__name__, meta["pipeline"]) == ("StableDiffusionImg2ImgPipeline",) * 2


@pytest.mark.parametrize("filename", ["tiny.safetensors", "tiny.ckpt"])
def test_single_file_with_a_local_config_reproduces_the_image(sd1_checkpoints, sd1_folder, filename):
    path = sd1_checkpoints / filename
    pipe, meta = load_pipeline(str(path), config=sd1_folder)
    assert meta == {
        "name": "tiny",
        "source": "single-file",
        "path": str(path.resolve()),
        "architecture": "sd1",
        "config": str(sd1_folder.resolve()),
        "prediction_type": "epsilon",
        "prediction_type_from": "default",
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "a1111_shorthash": hashlib.sha256(path.read_bytes()).hexdigest()[:10],
        "a1111_legacy_hash": meta["a1111_legacy_hash"],
        "pipeline": "StableDiffusionPipeline",
    }
    assert np.array_equal(generate(pipe), generate(build_tiny_pipeline("tiny-sd1")))


def test_hub_id_loads_from_the_local_cache(offline_hub, sd1_folder):
    # the Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--someone--tiny-sd1"
    shutil.copytree(sd1_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    pipe, meta = load_pipeline("someone/tiny-sd1")
    assert meta == {"name": "someone/tiny-sd1", "source": "hub", "path": str(repo / "snapshots" / commit),
                    "architecture": "sd1", "pipeline": "StableDiffusionPipeline"}
    assert np.array_equal(generate(pipe), generate(build_tiny_pipeline("tiny-sd1")))


# --- refusals ----------------------------------------------------------------------------------------


def test_tiny_checkpoint_without_config_names_the_size_mismatch(sd1_checkpoints):
    # detected as SD1 by its keys, but the shipped SD1 configs are full-size: refused before loading
    path = sd1_checkpoints / "tiny.safetensors"
    with pytest.raises(ModelError) as err:
        load_pipeline(str(path))
    assert str(err.value) == (
        f"{path} is a sd1 checkpoint by its keys, but its U-Net has 8 channels and 32-wide cross-attention where sd1 "
        "has 320 and 768; pass --config with a diffusers folder of its configs"
    )


def test_single_file_missing_a_component_is_a_model_error(tmp_path, sd1_checkpoints, sd1_folder):
    weights = ldm_state_dict(build_tiny_pipeline("tiny-sd1"))
    path = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in weights.items() if not k.startswith("first_stage_model.")}, path)
    with pytest.raises(ModelError) as err:
        load_pipeline(str(path), config=sd1_folder)
    assert str(err.value).startswith(
        f"cannot build a sd1 pipeline from {path} with the configs of {sd1_folder.resolve()}: "
    )
    assert "\n" not in str(err.value)


def test_pickled_code_in_a_ckpt_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": Payload()}}, path)
    with pytest.raises(ModelError) as err:
        load_pipeline(str(path))
    assert str(err.value) == (
        f"{path} holds Python objects besides tensors, and pickles are opened only with "
        "torch.load(weights_only=True); convert it to .safetensors where you trust it"
    )
    assert not marker.exists()


def test_pickled_code_in_a_diffusers_folder_is_one_error_not_run(tmp_path):
    # a folder whose text encoder weights are a .bin pickle carrying code: transformers loads it
    # with torch.load(weights_only=True), which refuses; that refusal is one ModelError
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    folder = tmp_path / "evil-diffusers"
    build_tiny_pipeline("tiny-sd1").save_pretrained(folder)
    for weights in (folder / "text_encoder").glob("*.safetensors"):
        weights.unlink()
    torch.save({"w": Payload()}, folder / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ModelError) as err:
        load_pipeline(str(folder))
    assert str(err.value) == (
        f"cannot load the diffusers folder {folder}: a .bin weights file holds Python objects besides tensors, "
        "and pickles are opened only with torch.load(weights_only=True); convert it to .safetensors where you trust it"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("notes.safetensors", b"just some text\n",
         "{path} is not a valid .safetensors file: Error while deserializing header: header too large"),
        ("notes.ckpt", b"just some text\n", "{path} is not a valid .ckpt file: "),
        ("notes.txt", b"text", "{path} is not a checkpoint: expected a .safetensors or .ckpt file, got .txt"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, filename, content, message):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(ModelError) as err:
        load_pipeline(str(path))
    assert str(err.value).startswith(message.format(path=path))


def test_checkpoint_without_a_unet(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(2), "decoder.conv_out.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelError) as err:
        load_pipeline(str(path))
    assert str(err.value) == (
        f"{path} is not a Stable Diffusion checkpoint: none of its 2 tensors is a U-Net weight (model.diffusion_model.*)"
    )


@pytest.mark.parametrize("model", ["missing.safetensors", "./no/such/folder", "tiny-sd3", "~/nothing.ckpt"])
def test_missing_models(model):
    with pytest.raises(ModelError) as err:
        load_pipeline(model)
    assert str(err.value) == f"no model at {model} {NO_MODEL}"


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelError) as err:
        load_pipeline(str(tmp_path))
    assert str(err.value) == f"{tmp_path} is a folder but not a diffusers pipeline (it has no model_index.json)"


def test_hub_id_not_in_cache_offline_fails_at_once():
    with pytest.raises(ModelError) as err:
        load_pipeline("nobody/no-such-model")
    assert str(err.value) == (
        "nobody/no-such-model is not in the local Hugging Face cache and the machine is offline (HF_HUB_OFFLINE); "
        "download it once online, or pass a local folder or checkpoint file"
    )


def test_config_is_for_checkpoints_only(tmp_path, sd1_checkpoints):
    with pytest.raises(ModelError) as err:
        load_pipeline("tiny-sd1", config=tmp_path)
    assert str(err.value) == "config= applies to .safetensors/.ckpt checkpoints only, not to tiny-sd1"
    with pytest.raises(ModelError) as err:
        load_pipeline(str(sd1_checkpoints / "tiny.safetensors"), config=tmp_path)
    assert str(err.value) == f"config {tmp_path} is not a diffusers folder (it has no model_index.json)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_device():
    with pytest.raises(OptionError) as err:
        load_pipeline("tiny-sd1", device="cuda")
    assert not isinstance(err.value, ModelError)
    assert str(err.value) == f"device 'cuda' is not available on this machine (torch {torch.__version__})"


def test_unknown_device_is_an_option_error():
    with pytest.raises(OptionError) as err:
        load_pipeline("tiny-sd1", device="gpu0")
    assert not isinstance(err.value, ModelError) and isinstance(err.value, ValueError)
    assert str(err.value).startswith("unknown device 'gpu0': ")

"""Load a Stable Diffusion pipeline from whatever a user names, and say what it is.

=================================  ===========================================================
``tiny-sd1``, ``tiny-sdxl``        the embedded models of :mod:`dumpunet.recorder.tiny`
a folder with ``model_index.json``  a diffusers pipeline saved with ``save_pretrained``
``model.safetensors``/``.ckpt``    an original (A1111-style) single-file checkpoint
``owner/name``                     a Hugging Face Hub repository (from the local cache, or
                                   downloaded when online)
=================================  ===========================================================

Single-file checkpoints hold weights only. diffusers builds the pipeline around them from the
component configs (and tokenizers) of a reference diffusers model: the ``config`` folder if
given, else the Hub repository diffusers uses for that architecture, which must then be in the
local Hugging Face cache or downloadable. Nothing here waits on a network that is not there:
with ``HF_HUB_OFFLINE=1`` a model that is not cached is an immediate :class:`ModelError`.

``.ckpt`` files are pickles. They are opened with ``torch.load(weights_only=True)`` before
diffusers sees them, so a file holding anything but tensors and plain containers is refused
instead of executed.

Examples
--------
>>> pipe, meta = load_pipeline("tiny-sd1")
>>> meta["source"], meta["architecture"], meta["pipeline"]
('embedded', 'sd1', 'StableDiffusionPipeline')
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dumpunet.errors import ModelError, OptionError
from dumpunet.recorder.tiny import TINY_MODELS, build_tiny_pipeline

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

__all__ = ["CHECKPOINT_SUFFIXES", "DEFAULT_CONFIG_REPOS", "load_pipeline"]

Architecture = Literal["sd1", "sd2", "sdxl"]

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")

DEFAULT_CONFIG_REPOS: dict[str, str] = {
    # The reference models diffusers' single-file loader picks for these architectures.
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}

_PIPELINES = {
    ("sd1", False): "StableDiffusionPipeline",
    ("sd1", True): "StableDiffusionImg2ImgPipeline",
    ("sd2", False): "StableDiffusionPipeline",
    ("sd2", True): "StableDiffusionImg2ImgPipeline",
    ("sdxl", False): "StableDiffusionXLPipeline",
    ("sdxl", True): "StableDiffusionXLImg2ImgPipeline",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_UNET_PREFIX = "model.diffusion_model."
_SD2_CROSS_ATTN = _UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def _load_errors() -> tuple[type[BaseException], ...]:
    # What loading a user's damaged or mismatched files raises; other exceptions are our bugs.
    from safetensors import SafetensorError

    errors: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, KeyError, ImportError, SafetensorError)
    try:  # a checkpoint lacking a component's weights; not exported at diffusers' top level
        from diffusers.loaders.single_file_utils import SingleFileComponentError
    except ImportError:
        return errors
    return (*errors, SingleFileComponentError)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def check_device(device: str) -> torch.device:
    """The torch device ``device`` names, if this machine can compute on it; else an :class:`OptionError`."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "meta":  # tensors without data: the pipeline would run and record nothing real
        raise OptionError(f"device {device!r} holds no data; choose cpu, cuda or mps")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "xpu": hasattr(torch, "xpu") and torch.xpu.is_available(),
    }
    if not available.get(dev.type, True):
        raise OptionError(f"device {device!r} is not available on this machine (torch {torch.__version__})")
    return dev


def _folder_architecture(folder: Path) -> Architecture:
    """Tell SD1, SD2 and SDXL apart by the folder's U-Net config."""
    unet_config = folder / "unet" / "config.json"
    try:
        cfg = json.loads(unet_config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder} is not a Stable Diffusion pipeline: cannot read {unet_config} ({exc})") from exc
    if cfg.get("_class_name") != "UNet2DConditionModel":
        raise ModelError(
            f"{folder} holds a {cfg.get('_class_name')!r} denoiser; dumpunet records UNet2DConditionModel pipelines "
            "(SD1, SD2, SDXL)"
        )
    if cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    cross = cfg.get("cross_attention_dim")
    return "sd2" if cross == 1024 or (isinstance(cross, list) and cross[0] == 1024) else "sd1"


def _from_folder(folder: Path, arch: Architecture, img2img: bool, torch_dtype: Any, what: str) -> DiffusionPipeline:
    import diffusers

    cls = getattr(diffusers, _PIPELINES[arch, img2img])
    extra: dict[str, Any] = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    try:
        return cls.from_pretrained(folder, local_files_only=True, torch_dtype=torch_dtype, **extra)
    except pickle.UnpicklingError as exc:  # a .bin weights file: torch.load(weights_only=True) refused it
        if not str(exc).startswith(_WEIGHTS_ONLY):
            raise ModelError(f"cannot load {what} {folder}: a .bin weights file is not a valid pickle: {exc}") from exc
        raise ModelError(
            f"cannot load {what} {folder}: a .bin weights file holds Python objects besides tensors, and "
            f"{_PICKLE_POLICY}"
        ) from exc
    except _load_errors() as exc:
        raise ModelError(f"cannot load {what} {folder}: {exc}") from exc


_WEIGHTS_ONLY = "Weights only load failed"
"""How torch.load(weights_only=True) starts its message when a pickle holds more than tensors."""
_PICKLE_POLICY = "pickles are opened only with torch.load(weights_only=True); convert it to .safetensors where you trust it"


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Read a checkpoint's tensor names and shapes, refusing anything that is not plain tensors."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{path} is not a valid .safetensors file: {exc}") from exc

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if not str(exc).startswith(_WEIGHTS_ONLY):
            raise ModelError(f"{path} is not a valid .ckpt file: {exc}") from exc
        raise ModelError(f"{path} holds Python objects besides tensors, and {_PICKLE_POLICY}") from exc
    except Exception as exc:  # the unpickler fed arbitrary bytes raises anything (KeyError, EOFError, ...)
        raise ModelError(f"{path} is not a valid .ckpt file: {type(exc).__name__}: {exc}") from exc
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a checkpoint: it holds a {type(data).__name__}, not a dict of tensors")
    return {k: tuple(v.shape) for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _checkpoint_architecture(path: Path, shapes: dict[str, tuple[int, ...]]) -> Architecture:
    if not any(k.startswith(_UNET_PREFIX) for k in shapes):
        raise ModelError(
            f"{path} is not a Stable Diffusion checkpoint: none of its {len(shapes)} tensors is a U-Net weight "
            f"({_UNET_PREFIX}*)"
        )
    if any(k.startswith("conditioner.embedders.") for k in shapes):
        return "sdxl"
    return "sd2" if shapes.get(_SD2_CROSS_ATTN, (0,))[-1] == 1024 else "sd1"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)


def _from_single_file(
    path: Path, img2img: bool, torch_dtype: Any, config: str | os.PathLike[str] | None
) -> tuple[DiffusionPipeline, dict[str, Any]]:
    import diffusers

    arch = _checkpoint_architecture(path, _checkpoint_shapes(path))
    local = True
    if config is not None:
        config_dir = Path(config).expanduser()
        if not (config_dir / "model_index.json").is_file():
            raise ModelError(f"config {config} is not a diffusers folder (it has no model_index.json)")
        config_ref = str(config_dir.resolve())
    else:
        config_ref = DEFAULT_CONFIG_REPOS[arch]
        if not _cached(config_ref):
            if _offline():
                raise ModelError(
                    f"{path} is a single-file {arch} checkpoint; its pipeline is built from the component "
                    f"configs of {config_ref}, which are not in the local Hugging Face cache, and the machine is "
                    "offline (HF_HUB_OFFLINE). Pass config=<a local diffusers folder of the same architecture>, "
                    "or load once online to cache them."
                )
            local = False  # downloads the small config and tokenizer files only

    cls = getattr(diffusers, _PIPELINES[arch, img2img])
    extra: dict[str, Any] = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = cls.from_single_file(
            str(path), config=config_ref, local_files_only=local, torch_dtype=torch_dtype, **extra
        )
    except _load_errors() as exc:
        # diffusers appends code advice for its own API after the first line; keep the finding
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot build a {arch} pipeline from {path} with the configs of {config_ref}: {reason}") from exc
    meta = {
        "name": path.stem,
        "source": "single-file",
        "path": str(path.resolve()),
        "architecture": arch,
        "config": config_ref,
        "file_sha256": _sha256(path),
    }
    return pipe, meta


def _hub_folder(repo_id: str) -> Path:
    """Return the local snapshot of ``repo_id``, downloading it only when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        if _offline():
            raise ModelError(
                f"{repo_id} is not in the local Hugging Face cache and the machine is offline (HF_HUB_OFFLINE); "
                "download it once online, or pass a local folder or checkpoint file"
            ) from None
        from diffusers import DiffusionPipeline

        try:
            folder = Path(DiffusionPipeline.download(repo_id))
        except _load_errors() as exc:  # huggingface_hub's HTTP and offline errors are OSErrors
            raise ModelError(f"cannot download {repo_id} from the Hugging Face Hub: {exc}") from exc
    return folder


def load_pipeline(
    model: str = "tiny-sd1",
    *,
    img2img: bool = False,
    device: str = "cpu",
    torch_dtype: torch.dtype | None = None,
    config: str | os.PathLike[str] | None = None,
) -> tuple[DiffusionPipeline, dict[str, Any]]:
    """Load ``model`` as a text-to-image (or image-to-image) pipeline and describe where it came from.

    Parameters
    ----------
    model
        ``tiny-sd1``/``tiny-sdxl``, a diffusers folder, a ``.safetensors``/``.ckpt`` file or a
        Hub id ``owner/name``.
    img2img
        Return the Img2Img pipeline class for the same weights.
    device, torch_dtype
        Where and in which dtype the weights live (``None``: as stored; float32 for tiny).
    config
        Single-file checkpoints only: a local diffusers folder whose component configs and
        tokenizers describe the checkpoint (its weights are not read). Without it, the
        architecture's reference repository in the Hugging Face cache is used.

    Returns
    -------
    The pipeline, and a JSON-ready dict with ``name``, ``source`` (``embedded``,
    ``diffusers-folder``, ``single-file`` or ``hub``), ``path``, ``architecture`` (``sd1``,
    ``sd2``, ``sdxl``) and ``pipeline`` (class name); single files add ``file_sha256`` and
    ``config``.

    Examples
    --------
    >>> pipe, meta = load_pipeline("tiny-sdxl", img2img=True)
    >>> meta["pipeline"], meta["path"]
    ('StableDiffusionXLImg2ImgPipeline', None)
    """
    dev = check_device(device)
    if config is not None and not model.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"config= applies to .safetensors/.ckpt checkpoints only, not to {model}")
    meta: dict[str, Any]
    if model.lower() in TINY_MODELS:
        name = model.lower()
        pipe = build_tiny_pipeline(name, img2img=img2img)
        if torch_dtype is not None:
            pipe.to(dtype=torch_dtype)
        meta = {"name": name, "source": "embedded", "path": None, "architecture": name.removeprefix("tiny-")}
    else:
        path = Path(model).expanduser()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelError(f"{model} is a folder but not a diffusers pipeline (it has no model_index.json)")
            arch = _folder_architecture(path)
            pipe = _from_folder(path, arch, img2img, torch_dtype, "the diffusers folder")
            meta = {"name": path.resolve().name, "source": "diffusers-folder", "path": str(path.resolve()),
                    "architecture": arch}
        elif path.is_file():
            if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise ModelError(
                    f"{model} is not a checkpoint: expected a {' or '.join(CHECKPOINT_SUFFIXES)} file, "
                    f"got {path.suffix or 'no suffix'}"
                )
            pipe, meta = _from_single_file(path, img2img, torch_dtype, config)
        elif _HUB_ID.match(model) and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            folder = _hub_folder(model)
            arch = _folder_architecture(folder)
            pipe = _from_folder(folder, arch, img2img, torch_dtype, f"hub model {model} from")
            meta = {"name": model, "source": "hub", "path": str(folder), "architecture": arch}
        else:
            raise ModelError(
                f"no model at {model} (expected a diffusers folder, a .safetensors/.ckpt file, "
                f"{'/'.join(TINY_MODELS)} or a hub id)"
            )
    pipe.to(dev)
    meta["pipeline"] = type(pipe).__name__
    return pipe, meta

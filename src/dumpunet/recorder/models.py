"""Load a Stable Diffusion pipeline from whatever a user names, and say what it is.

=================================  ===========================================================
``tiny-sd1``, ``tiny-sdxl``        the embedded models of :mod:`dumpunet.recorder.tiny`
a folder with ``model_index.json``  a diffusers pipeline saved with ``save_pretrained``
``model.safetensors``/``.ckpt``    an original (A1111-style) single-file checkpoint
``owner/name``                     a Hugging Face Hub repository (from the local cache, or
                                   downloaded when online)
=================================  ===========================================================

Single-file checkpoints hold weights only. :mod:`dumpunet.recorder.checkpoints` detects their
architecture from their keys and builds the pipeline around them from component configs shipped
in dumpunet and the CLIP vocabulary of an installed package: offline, with no Hugging Face cache.
A ``config`` folder (a diffusers pipeline of the same architecture) replaces the shipped configs.
A Hub id is read from the local cache; with ``HF_HUB_OFFLINE=1`` one that is not cached is an
immediate :class:`ModelError`.

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

import json
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dumpunet.errors import ModelError, OptionError
from dumpunet.recorder.checkpoints import PICKLE_POLICY, WEIGHTS_ONLY, Architecture, load_single_file
from dumpunet.recorder.tiny import TINY_MODELS, build_tiny_pipeline

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

__all__ = ["CHECKPOINT_SUFFIXES", "load_pipeline"]

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")

_PIPELINES = {
    ("sd1", False): "StableDiffusionPipeline",
    ("sd1", True): "StableDiffusionImg2ImgPipeline",
    ("sd2", False): "StableDiffusionPipeline",
    ("sd2", True): "StableDiffusionImg2ImgPipeline",
    ("sdxl", False): "StableDiffusionXLPipeline",
    ("sdxl", True): "StableDiffusionXLImg2ImgPipeline",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        if not str(exc).startswith(WEIGHTS_ONLY):
            raise ModelError(f"cannot load {what} {folder}: a .bin weights file is not a valid pickle: {exc}") from exc
        raise ModelError(
            f"cannot load {what} {folder}: a .bin weights file holds Python objects besides tensors, and "
            f"{PICKLE_POLICY}"
        ) from exc
    except _load_errors() as exc:
        raise ModelError(f"cannot load {what} {folder}: {exc}") from exc


def _from_single_file(
    path: Path, img2img: bool, torch_dtype: Any, config: str | os.PathLike[str] | None, prediction_type: str | None
) -> tuple[DiffusionPipeline, dict[str, Any]]:
    import diffusers

    config_dir = None
    if config is not None:
        config_dir = Path(config).expanduser()
        if not (config_dir / "model_index.json").is_file():
            raise ModelError(f"config {config} is not a diffusers folder (it has no model_index.json)")
        config_dir = config_dir.resolve()
    classes = {arch: getattr(diffusers, _PIPELINES[arch, img2img]) for arch in ("sd1", "sd2", "sdxl")}
    return load_single_file(path, classes, torch_dtype=torch_dtype, config=config_dir, prediction=prediction_type,
                            load_errors=_load_errors())


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
    prediction_type: str | None = None,
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
        tokenizers describe the checkpoint (its weights are not read). Without it, the configs
        shipped in dumpunet for the detected architecture are used (offline).
    prediction_type
        Single-file checkpoints only: ``epsilon`` or ``v_prediction``, instead of what
        :func:`dumpunet.recorder.checkpoints.prediction_type` decides.

    Returns
    -------
    The pipeline, and a JSON-ready dict with ``name``, ``source`` (``embedded``,
    ``diffusers-folder``, ``single-file`` or ``hub``), ``path``, ``architecture`` (``sd1``,
    ``sd2``, ``sdxl``) and ``pipeline`` (class name); single files add ``config``,
    ``prediction_type``, ``prediction_type_from``, ``file_sha256``, ``a1111_shorthash`` and
    ``a1111_legacy_hash``.

    Examples
    --------
    >>> pipe, meta = load_pipeline("tiny-sdxl", img2img=True)
    >>> meta["pipeline"], meta["path"]
    ('StableDiffusionXLImg2ImgPipeline', None)
    """
    dev = check_device(device)
    if config is not None and not model.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"config= applies to .safetensors/.ckpt checkpoints only, not to {model}")
    if prediction_type is not None and not model.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"prediction_type= applies to .safetensors/.ckpt checkpoints only, not to {model}")
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
            pipe, meta = _from_single_file(path, img2img, torch_dtype, config, prediction_type)
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

"""Original (A1111-style) single-file checkpoints: what they hold, and the pipeline they make, offline.

A ``.safetensors``/``.ckpt`` checkpoint holds weights only, under the original (LDM) key names:
``model.diffusion_model.*`` (U-Net), ``first_stage_model.*`` (VAE) and the text encoder(s).
:func:`detect` names the architecture from those keys the way AUTOMATIC1111's
``guess_model_config_from_state_dict`` does (by the text encoder family), and refuses U-Nets
that are not plain text-to-image ones (inpainting, instruct-pix2pix) and the SDXL refiner.

diffusers' ``from_single_file`` then builds the pipeline around the weights from component
configs. Without ``config`` they come from :data:`CONFIGS`, small JSON files shipped in dumpunet
(copies of the configs of stable-diffusion-v1-5, stable-diffusion-2-1-base, stable-diffusion-2-1
and stable-diffusion-xl-base-1.0), and the tokenizers from :func:`~dumpunet.recorder.tokenizer.clip_tokenizer`:
nothing is read from the Hugging Face cache or the network.

SD2 comes in two parameterizations, 512 px epsilon (2.x-base) and 768 px v-prediction: see
:func:`prediction_type` for how one is chosen.

Examples
--------
>>> detect("m.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
...                          "cond_stage_model.model.ln_final.weight": (1024,)})
'sd2'
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dumpunet.errors import ModelError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

__all__ = ["CONFIGS", "PREDICTION_TYPES", "detect", "file_hashes", "load_single_file", "prediction_type", "read_shapes"]

Architecture = Literal["sd1", "sd2", "sdxl"]
PredictionType = Literal["epsilon", "v_prediction"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")

CONFIGS = Path(__file__).with_name("checkpoint_configs")
"""Diffusers-layout config folders (no weights, no vocabularies): ``sd1``, ``sd2``, ``sd2-v``, ``sdxl``."""

UNET = "model.diffusion_model."
_UNET_IN = UNET + "input_blocks.0.0.weight"
_LABEL_EMB = UNET + "label_emb.0.0.weight"
_XATTN = re.compile(re.escape(UNET) + r".*\.attn2\.to_k\.weight")

# Key groups of the original checkpoints, as a checkpoint's content is reported.
_GROUPS: tuple[tuple[str, str], ...] = (
    ("first_stage_model.", "VAE"),
    ("cond_stage_model.transformer.", "CLIP ViT-L text encoder (SD1)"),
    ("cond_stage_model.model.", "OpenCLIP ViT-H text encoder (SD2)"),
    ("conditioner.embedders.0.transformer.", "CLIP ViT-L text encoder (SDXL)"),
    ("conditioner.embedders.1.model.", "OpenCLIP ViT-bigG text encoder (SDXL)"),
    ("conditioner.embedders.0.model.", "OpenCLIP ViT-bigG text encoder alone (SDXL refiner)"),
    ("cond_stage_model.roberta.", "XLM-RoBERTa text encoder (AltDiffusion)"),
    ("embedder.model.", "CLIP image embedder (unCLIP)"),
    ("depth_model.", "depth model (SD2 depth)"),
    ("control_model.", "ControlNet"),
)
_TEXT = {
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
_ORDER: tuple[Architecture, ...] = ("sdxl", "sd2", "sd1")  # SDXL's CLIP ViT-L must not read as SD1's
_SHAPES = {"sd1": (320, 768), "sd2": (320, 1024), "sdxl": (320, 2048)}
"""(U-Net model channels, cross-attention width) of each architecture's shipped config."""
_SUPPORTED = "SD1.x, SD2.x and SDXL base text-to-image checkpoints"

WEIGHTS_ONLY = "Weights only load failed"
"""How torch.load(weights_only=True) starts its message when a pickle holds more than tensors."""
PICKLE_POLICY = "pickles are opened only with torch.load(weights_only=True); convert it to .safetensors where you trust it"


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Read a checkpoint's tensor names and shapes, refusing anything that is not plain tensors.

    ``.ckpt`` pickles are opened with ``torch.load(weights_only=True)``: a file holding anything
    but tensors and plain containers is refused instead of executed.
    """
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
        if not str(exc).startswith(WEIGHTS_ONLY):
            raise ModelError(f"{path} is not a valid .ckpt file: {exc}") from exc
        raise ModelError(f"{path} holds Python objects besides tensors, and {PICKLE_POLICY}") from exc
    except Exception as exc:  # the unpickler fed arbitrary bytes raises anything (KeyError, EOFError, ...)
        raise ModelError(f"{path} is not a valid .ckpt file: {type(exc).__name__}: {exc}") from exc
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a checkpoint: it holds a {type(data).__name__}, not a dict of tensors")
    return {k: tuple(v.shape) for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _unet_summary(shapes: dict[str, tuple[int, ...]]) -> tuple[int | None, int | None, int | None]:
    """(input channels, model channels, cross-attention width) of the checkpoint's U-Net, where its keys tell."""
    conv_in = shapes.get(_UNET_IN)
    xattn = next((s for k, s in sorted(shapes.items()) if _XATTN.fullmatch(k) and len(s) == 2), None)
    in_ch = conv_in[1] if conv_in is not None and len(conv_in) == 4 else None
    width = conv_in[0] if conv_in is not None and len(conv_in) == 4 else None
    return in_ch, width, (xattn[1] if xattn else None)


def _found(shapes: dict[str, tuple[int, ...]]) -> str:
    """Describe the key groups of a checkpoint in a few words: what an error names."""
    in_ch, _, ctx = _unet_summary(shapes)
    parts = [f"{in_ch} input channels" if in_ch else "no input convolution",
             f"{ctx}-wide cross-attention" if ctx else "no cross-attention"]
    if _LABEL_EMB in shapes:
        parts.append("SDXL size conditioning")
    groups = [name for prefix, name in _GROUPS if any(k.startswith(prefix) for k in shapes)]
    return ", ".join([f"U-Net ({', '.join(parts)})", *groups])


def detect(path: str | Path, shapes: dict[str, tuple[int, ...]]) -> Architecture:
    """Name the architecture of a checkpoint from its keys (and a few shapes); refuse what dumpunet cannot run.

    As A1111 does, the text encoder family decides: OpenCLIP bigG beside CLIP ViT-L is SDXL base,
    OpenCLIP ViT-H is SD2, CLIP ViT-L is SD1. The U-Net must take 4 input channels (9 is an
    inpainting model, 8 instruct-pix2pix).

    Examples
    --------
    >>> detect("x.ckpt", {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3),
    ...                   "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)})
    Traceback (most recent call last):
    ...
    dumpunet.errors.ModelError: x.ckpt matches no architecture dumpunet loads (SD1.x, SD2.x and SDXL base text-to-image checkpoints): it has a U-Net (9 input channels, no cross-attention), CLIP ViT-L text encoder (SD1); a U-Net with 9 input channels is an inpainting model
    """
    if not any(k.startswith(UNET) for k in shapes):
        raise ModelError(
            f"{path} is not a Stable Diffusion checkpoint: none of its {len(shapes)} tensors is a U-Net weight ({UNET}*)"
        )
    has = {prefix for prefix, _ in _GROUPS if any(k.startswith(prefix) for k in shapes)}
    arch: Architecture | None = next((a for a in _ORDER if all(p in has for p in _TEXT[a])), None)
    in_ch, _, _ = _unet_summary(shapes)
    reason = ""
    if in_ch not in (None, 4):
        kind = {9: "an inpainting model", 8: "an instruct-pix2pix model"}.get(in_ch, "not a text-to-image model")
        reason = f"; a U-Net with {in_ch} input channels is {kind}"
        arch = None
    elif arch is None and "conditioner.embedders.0.model." in has:
        reason = "; the SDXL refiner is not supported"
    elif arch is None:
        reason = "; no text encoder of SD1 (cond_stage_model.transformer.*), SD2 (cond_stage_model.model.*) or SDXL"
    if arch is None:
        raise ModelError(f"{path} matches no architecture dumpunet loads ({_SUPPORTED}): it has a {_found(shapes)}{reason}")
    return arch


def check_shipped_shapes(path: str | Path, arch: Architecture, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a checkpoint whose U-Net is not the size of the shipped ``arch`` config (e.g. a tiny test model)."""
    _, width, ctx = _unet_summary(shapes)
    want_width, want_ctx = _SHAPES[arch]
    if (width, ctx) != (want_width, want_ctx):
        raise ModelError(
            f"{path} is a {arch} checkpoint by its keys, but its U-Net has {width} channels and {ctx}-wide "
            f"cross-attention where {arch} has {want_width} and {want_ctx}; pass --config with a diffusers folder "
            "of its configs"
        )


def _yaml_parameterization(path: Path) -> PredictionType | None:
    """The parameterization A1111 reads from a ``NAME.yaml`` beside ``NAME.safetensors``, if there is one."""
    config = path.with_suffix(".yaml")
    if not config.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read {config}, the checkpoint's A1111 config beside it: {reason}") from exc
    value = data
    for key in ("model", "params", "parameterization"):
        value = value.get(key) if isinstance(value, dict) else None
    return "v_prediction" if value == "v" else "epsilon"  # LDM's default parameterization is "eps"


def prediction_type(
    path: Path, shapes: dict[str, tuple[int, ...]], arch: Architecture, override: str | None = None
) -> tuple[PredictionType | None, str]:
    """Choose epsilon or v-prediction for a checkpoint, and say why; ``None``: run A1111's SD2 test on the U-Net.

    In this order: ``override`` (``--prediction-type``); a ``NAME.yaml`` beside the checkpoint with
    ``model.params.parameterization: v`` (A1111's convention for 768-v models); a ``v_pred`` key in
    the state dict (the marker A1111 and ComfyUI read on v-prediction SDXL finetunes); else epsilon
    for SD1 and SDXL, and for SD2 ``None``: :func:`predicts_v`, A1111's test on the loaded U-Net.
    """
    if override is not None:
        if override not in PREDICTION_TYPES:
            raise ModelError(f"prediction type must be one of {', '.join(PREDICTION_TYPES)}, got {override!r}")
        return override, "option"  # type: ignore[return-value]
    from_yaml = _yaml_parameterization(path)
    if from_yaml is not None:
        return from_yaml, f"{path.with_suffix('.yaml').name} beside the checkpoint"
    if "v_pred" in shapes:
        return "v_prediction", "v_pred key"
    if arch == "sd2":
        return None, "A1111's SD2 test"
    return "epsilon", "default"


def predicts_v(unet: Any) -> bool:
    """A1111's ``is_using_v_parameterization_for_sd2``: a v-prediction U-Net's output at t=999 sits well below its input.

    The input latent and a 2-token context are all 0.5; the U-Net predicts v when the mean of
    (output - input) is below -1 (AUTOMATIC1111 ``modules/sd_models_config.py``).
    """
    import torch

    p = next(unet.parameters())
    with torch.no_grad():
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=p.dtype, device=p.device)
        context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=p.dtype, device=p.device)
        out = unet(x, torch.tensor([999], device=p.device), encoder_hidden_states=context).sample
        return bool((out.float() - x.float()).mean().item() < -1)


def file_hashes(path: Path) -> dict[str, str]:
    """The file's sha256, A1111's short hash (its first 10 hex digits) and A1111's legacy model hash.

    Infotexts since A1111 1.0 say ``Model hash: <short hash>``; older ones carry the legacy hash,
    the first 8 hex digits of the sha256 of the 64 KiB at offset 1 MiB (``modules/sd_models.py``).

    Examples
    --------
    >>> p = Path("m.safetensors"); _ = p.write_bytes(b"x" * 2**21)
    >>> h = file_hashes(p)
    >>> h["a1111_shorthash"] == h["file_sha256"][:10] == hashlib.sha256(p.read_bytes()).hexdigest()[:10]
    True
    """
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    full = h.hexdigest()
    return {"file_sha256": full, "a1111_shorthash": full[:10], "a1111_legacy_hash": legacy}


def _shipped_tokenizers(folder: Path) -> dict[str, Any]:
    """The pipeline's tokenizers, built from the packaged CLIP vocabulary with each folder's pad token."""
    from dumpunet.recorder.tokenizer import clip_tokenizer

    out = {}
    for name in ("tokenizer", "tokenizer_2"):
        cfg = folder / name / "tokenizer_config.json"
        if cfg.is_file():
            out[name] = clip_tokenizer(pad_token=json.loads(cfg.read_text(encoding="utf-8"))["pad_token"])
    return out


def _as_v_prediction(pipe: Any) -> Any:
    """Rebuild an SD2 pipeline loaded with the 512 px epsilon configs, around the same tensors, with the 768-v ones."""
    import diffusers
    import torch

    v_folder = CONFIGS / "sd2-v"
    unet_config = json.loads((v_folder / "unet" / "config.json").read_text(encoding="utf-8"))
    with torch.device("meta"):  # no second copy of the weights: the loaded tensors are assigned below
        unet = diffusers.UNet2DConditionModel.from_config(unet_config)
    unet.load_state_dict(pipe.unet.state_dict(), assign=True)  # the U-Net has no buffers: every tensor moves over
    unet.eval()
    sched_config = json.loads((v_folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    scheduler = getattr(diffusers, sched_config["_class_name"]).from_config(sched_config)
    components = {**pipe.components, "unet": unet, "scheduler": scheduler}
    return type(pipe)(**components, requires_safety_checker=pipe.config.requires_safety_checker)


def load_single_file(
    path: Path,
    pipeline_cls: dict[str, type],
    *,
    torch_dtype: torch.dtype | None = None,
    config: Path | None = None,
    prediction: str | None = None,
    load_errors: tuple[type[BaseException], ...] = (),
) -> tuple[DiffusionPipeline, dict[str, Any]]:
    """Build a pipeline from a single-file checkpoint, offline; return it and the loader's metadata.

    ``pipeline_cls`` maps each architecture to the diffusers pipeline class to build (text-to-image
    or image-to-image). ``config``: a diffusers folder to take the component configs and tokenizers
    from instead of the shipped ones. ``prediction``: force ``epsilon`` or ``v_prediction``.
    ``load_errors``: the exceptions that mean the files, not dumpunet, are at fault. The metadata
    holds the architecture, the config used, the prediction type and what decided it, and
    :func:`file_hashes`.
    """
    shapes = read_shapes(path)
    arch = detect(path, shapes)
    predict, source = prediction_type(path, shapes, arch, prediction)
    extra: dict[str, Any] = {} if arch == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    if config is not None:
        folder, config_ref = config, str(config)
    else:
        check_shipped_shapes(path, arch, shapes)
        name = "sd2-v" if arch == "sd2" and predict == "v_prediction" else arch
        folder = CONFIGS / name
        config_ref = f"dumpunet:{name}"
        extra.update(_shipped_tokenizers(folder))
    cls = pipeline_cls[arch]
    try:
        pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, torch_dtype=torch_dtype, **extra)
    except load_errors as exc:
        # diffusers appends code advice for its own API after the first line; keep the finding
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot build a {arch} pipeline from {path} with the configs of {config_ref}: {reason}") from exc
    if predict is None:  # SD2 without a marker: A1111's test on the weights
        predict = "v_prediction" if predicts_v(pipe.unet) else "epsilon"
        if predict == "v_prediction" and config is None:
            pipe = _as_v_prediction(pipe)
            config_ref = "dumpunet:sd2-v"
    if pipe.scheduler.config.get("prediction_type") != predict:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=predict)
    meta = {
        "name": path.stem,
        "source": "single-file",
        "path": str(path.resolve()),
        "architecture": arch,
        "config": config_ref,
        "prediction_type": predict,
        "prediction_type_from": source,
        **file_hashes(path),
    }
    return pipe, meta

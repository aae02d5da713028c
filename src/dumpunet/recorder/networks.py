"""Load LoRAs and textual-inversion embeddings into a pipeline, A1111's way of naming them.

LoRAs go through diffusers' own loader (``pipe.load_lora_weights`` with one adapter per file,
then ``pipe.set_adapters`` with the weights), which converts kohya/A1111 keys and needs
``peft``; nothing is fused, so the pipeline computes what a plain diffusers pipeline with the
same LoRAs loaded computes. Embeddings go through ``pipe.load_textual_inversion``, one token per
file named after the file's stem (A1111's convention), into both encoders on SDXL.

Files are read as tensors only: ``.safetensors``, or ``.pt``/``.ckpt`` pickles opened with
``torch.load(weights_only=True)``. Every failure is a :class:`~dumpunet.errors.RecordError`
of one line, raised before the store is created.

Examples
--------
>>> from dumpunet.recorder.networks import parse_lora_option
>>> parse_lora_option("loras/pink_hair.safetensors:0.7")
LoraUse(name='pink_hair', path=PosixPath('loras/pink_hair.safetensors'), te_weight=0.7, unet_weight=0.7, source='--lora')
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dumpunet.a1111_networks import LoraTag
from dumpunet.errors import OptionError, RecordError
from dumpunet.recorder.checkpoints import PICKLE_POLICY, WEIGHTS_ONLY
from dumpunet.store import schema

__all__ = ["LORA_SUFFIXES", "LoraUse", "apply_networks", "a1111_hash", "find_loras", "load_embeddings",
           "load_loras", "parse_lora_option", "read_tensors", "resolve_loras"]

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
"""File types A1111 lists as LoRAs (and reads as embeddings)."""


@dataclass(frozen=True)
class LoraUse:
    """One LoRA to load: its adapter name (the file stem), file, weights, and who asked for it."""

    name: str
    path: Path
    te_weight: float = 1.0
    unet_weight: float = 1.0
    source: str = "--lora"


def parse_lora_option(text: str) -> LoraUse:
    """Read ``--lora FILE[:WEIGHT]``; a tail that is not a number belongs to the path (``C:\\x``)."""
    head, sep, tail = text.rpartition(":")
    weight = 1.0
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            head = text
        else:
            if not math.isfinite(weight):
                raise OptionError(f"--lora {text!r}: the weight {tail!r} is not a finite number")
    else:
        head = text
    if not head.strip():
        raise OptionError(f"--lora {text!r} names no file; write FILE or FILE:WEIGHT")
    path = Path(head)
    return LoraUse(path.stem, path, weight, weight, "--lora")


def find_loras(lora_dir: Path) -> dict[str, Path]:
    """The LoRA files under ``lora_dir`` (sub-folders included, as in A1111) by name (file stem)."""
    if not lora_dir.is_dir():
        raise RecordError(f"--lora-dir {lora_dir} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(lora_dir.rglob("*")):
        if path.suffix.lower() in LORA_SUFFIXES and path.is_file():
            found.setdefault(path.stem, path)
    return found


def resolve_loras(options: Sequence[str], tags: Sequence[LoraTag], lora_dir: Path | None) -> list[LoraUse]:
    """The LoRAs of ``--lora`` options and prompt tags, each file checked to exist.

    A LoRA named again with the same file and weights (the prompt and ``--base`` of a pair) is
    loaded once; with another file or weight it is refused.
    """
    uses = [parse_lora_option(text) for text in options]
    if tags:
        if lora_dir is None:
            raise RecordError(f"the prompt names LoRA {tags[0].name!r} ({tags[0].text}); give --lora-dir FOLDER to find it in")
        found = find_loras(lora_dir)
        for tag in tags:
            if tag.name not in found:
                names = ", ".join(sorted(found)[:30]) + (" ..." if len(found) > 30 else "") if found else "none"
                raise RecordError(f"no LoRA named {tag.name!r} ({tag.text}) in --lora-dir {lora_dir}; found: {names}")
            uses.append(LoraUse(tag.name, found[tag.name], tag.te_weight, tag.unet_weight, tag.text))
    seen: dict[str, LoraUse] = {}
    for use in uses:
        if not use.path.is_file():
            raise RecordError(f"no LoRA file at {use.path}")
        if use.path.suffix.lower() not in LORA_SUFFIXES:
            raise RecordError(f"LoRA {use.path} is not a {'/'.join(LORA_SUFFIXES)} file")
        first = seen.get(use.name)
        if first is None:
            seen[use.name] = use
        elif (first.path.resolve(), first.te_weight, first.unet_weight) != (use.path.resolve(), use.te_weight, use.unet_weight):
            # one pipeline serves every run (--pair, --base): a LoRA has one weight in all of them
            raise RecordError(f"LoRA {use.name!r} is given twice, differently ({first.source} and {use.source}); give it once")
    return list(seen.values())


# ----------------------------------------------------------------------------- files


def read_tensors(path: Path, what: str) -> dict[str, Any]:
    """A LoRA or embedding file's contents: ``.safetensors``, or a pickle opened weights-only."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise RecordError(f"{what} {path} is not a valid .safetensors file: {exc}") from None
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if str(exc).startswith(WEIGHTS_ONLY):
            raise RecordError(f"{what} {path} holds Python objects besides tensors; {PICKLE_POLICY}") from None
        raise RecordError(f"{what} {path} is not a valid {path.suffix} file: {exc}") from None
    except Exception as exc:  # the unpickler fed arbitrary bytes raises anything (KeyError, EOFError, ...)
        raise RecordError(f"{what} {path} is not a valid {path.suffix} file: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{what} {path} holds a {type(data).__name__}, not a dict of tensors")
    return data


def _sha256(path: Path, *, skip_safetensors_header: bool = False) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        if skip_safetensors_header:
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def a1111_hash(path: Path, *, lora: bool) -> str:
    """The hash A1111 shows for a LoRA or embedding file (12 hex digits of it in infotext).

    A ``.safetensors`` LoRA is hashed without its header (A1111's ``addnet_hash_safetensors``,
    so editing metadata keeps the hash), unless its metadata carries ``sshs_model_hash``; any
    other file by all its bytes.
    """
    if lora and path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            given = (f.metadata() or {}).get("sshs_model_hash")
        return given or _sha256(path, skip_safetensors_header=True)
    return _sha256(path)


# ----------------------------------------------------------------------------- LoRA


def _architecture(pipe: Any) -> str:
    return "SDXL" if getattr(pipe, "text_encoder_2", None) is not None else "SD1/SD2"


def _is_sdxl_lora(keys: Sequence[str]) -> bool:
    """Whether the file has weights for SDXL's second text encoder (kohya ``lora_te2_``, diffusers ``text_encoder_2.``).

    A LoRA without them (SD1, SD2, or an SDXL U-Net-only one) is told apart by its shapes, when
    diffusers fits it into the model.
    """
    return any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys)


@contextmanager
def _quiet_loaders() -> Iterator[None]:
    """Silence diffusers', transformers' and peft's logging and progress bars while loading.

    Their failures still raise, and are turned into one line by the caller; without this, a
    mismatched LoRA also logs every mismatched tensor.
    """
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers", "peft")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        from transformers.utils import logging as transformers_logging

        bars = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency of the record extra
        transformers_logging, bars = None, False
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if transformers_logging is not None and bars:
            transformers_logging.enable_progress_bar()


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+?)(?:\.lora_[AB]\.[^.:]+)?\.weight: copying a param with shape "
                            r"torch\.Size\((\[[^\]]*\])\) from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")


def _why(exc: BaseException) -> str:
    """One line from a loader's exception: its first tensor size mismatch, else its first line."""
    text = str(exc).strip()
    m = _SIZE_MISMATCH.search(text)
    if m:
        return f"{m.group(1)} is {m.group(3)} in the model but {m.group(2)} in the LoRA"
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def load_loras(pipe: Any, uses: Sequence[LoraUse]) -> list[schema.NetworkFile]:
    """Load ``uses`` into ``pipe`` as diffusers adapters with their weights; describe each file for the store."""
    if not uses:
        return []
    if not hasattr(pipe, "load_lora_weights"):
        raise RecordError(f"{type(pipe).__name__} cannot load LoRAs")
    try:
        import peft  # noqa: F401 - diffusers' LoRA loading needs it
    except ImportError:
        raise RecordError("loading a LoRA needs the peft package: pip install 'dumpunet[record]'") from None
    arch = _architecture(pipe)
    out = []
    for use in uses:
        state = read_tensors(use.path, "LoRA")
        if _is_sdxl_lora(list(state)) and arch != "SDXL":
            raise RecordError(f"LoRA {use.name} ({use.path}) is for SDXL (it has weights for a second text encoder); "
                              f"the model is {arch}")
        try:
            with _quiet_loaders():
                pipe.load_lora_weights(state, adapter_name=use.name)
        except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as exc:
            raise RecordError(f"LoRA {use.name} ({use.path}) does not fit this {arch} model: {_why(exc)}") from None
        loaded = {a for names in pipe.get_list_adapters().values() for a in names}
        if use.name not in loaded:
            raise RecordError(f"LoRA {use.name} ({use.path}) holds no weight this {arch} model has")
        out.append(schema.NetworkFile(use.name, str(use.path), _sha256(use.path), a1111_hash(use.path, lora=True),
                                      te_weight=use.te_weight, unet_weight=use.unet_weight, source=use.source))
    parts = pipe.get_list_adapters()  # {"unet": [...], "text_encoder": [...], ...}
    weights = []
    for use in uses:
        weights.append({part: (use.unet_weight if part in ("unet", "transformer") else use.te_weight)
                        for part, names in parts.items() if use.name in names})
    with _quiet_loaders():
        pipe.set_adapters([u.name for u in uses], weights)
    return out


# ----------------------------------------------------------------------------- textual inversion


def _embedding_vectors(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The vectors of an embedding file per encoder key (``""`` for SD1/SD2; ``clip_l``, ``clip_g`` for SDXL)."""
    import torch

    if "string_to_param" in data:  # A1111's own format
        params = data["string_to_param"]
        if not isinstance(params, dict) or "*" not in params:
            raise RecordError(f"embedding {path} has a 'string_to_param' without the '*' vectors")
        data = {"": params["*"]}
    elif "clip_l" in data or "clip_g" in data:  # SDXL
        data = {k: data[k] for k in ("clip_l", "clip_g") if k in data}
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1:
            raise RecordError(f"embedding {path} holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:5])}); "
                              "expected one (diffusers), 'string_to_param' (A1111) or clip_l and clip_g (SDXL)")
        data = {"": next(iter(tensors.values()))}
    out = {}
    for key, v in data.items():
        if not isinstance(v, torch.Tensor) or v.ndim not in (1, 2) or v.numel() == 0:
            raise RecordError(f"embedding {path}: {key or 'the vectors'} must be a (vectors, width) tensor")
        out[key] = (v.unsqueeze(0) if v.ndim == 1 else v).detach().to(torch.float32)
    return out


def load_embeddings(pipe: Any, paths: Sequence[Path]) -> list[schema.NetworkFile]:
    """Load textual-inversion files into ``pipe``, each as the token of its file stem."""
    out: list[schema.NetworkFile] = []
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    encoders = ([("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]
                if sdxl else [("", pipe.tokenizer, pipe.text_encoder)])
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise RecordError(f"no embedding file at {path}")
        name = path.stem
        if any(f.name == name for f in out):
            raise RecordError(f"embedding {name!r} is given twice; give it once")
        vectors = _embedding_vectors(read_tensors(path, "embedding"), path)
        if sdxl and set(vectors) != {"clip_l", "clip_g"}:
            raise RecordError(f"embedding {path} is for SD1/SD2 (one set of vectors); an SDXL model needs clip_l and clip_g")
        if not sdxl and "" not in vectors:
            raise RecordError(f"embedding {path} is for SDXL (clip_l and clip_g); the model is SD1/SD2")
        counts = {v.shape[0] for v in vectors.values()}
        if len(counts) != 1:
            raise RecordError(f"embedding {path}: clip_l and clip_g have different numbers of vectors")
        for key, tokenizer, encoder in encoders:
            width = encoder.get_input_embeddings().weight.shape[-1]
            if vectors[key].shape[-1] != width:
                raise RecordError(f"embedding {path} has vectors of {vectors[key].shape[-1]} values; "
                                  f"the {key or 'text'} encoder takes {width}: it is for another model")
            if name in tokenizer.get_vocab():
                raise RecordError(f"embedding {name!r} ({path}): the tokenizer already has a token {name!r}; rename the file")
        try:
            with _quiet_loaders():
                for key, tokenizer, encoder in encoders:
                    v = vectors[key]
                    pipe.load_textual_inversion({name: v if v.shape[0] > 1 else v[0]}, token=name,
                                                tokenizer=tokenizer, text_encoder=encoder)
        except ValueError as exc:
            raise RecordError(f"cannot load embedding {path}: {str(exc).strip().splitlines()[0]}") from None
        out.append(schema.NetworkFile(name, str(path), _sha256(path), a1111_hash(path, lora=False),
                                      vectors=counts.pop()))
    return out


def apply_networks(pipe: Any, *, loras: Sequence[LoraUse] = (), embeddings: Sequence[Path] = ()) -> dict[str, Any]:
    """Load LoRAs and embeddings into ``pipe``; return the ``model`` attributes that record them.

    Pass the result as ``model_info`` to :func:`dumpunet.record` (``dumpunet record`` does so).

    Examples
    --------
    >>> from dumpunet.recorder.tiny import build_tiny_pipeline
    >>> apply_networks(build_tiny_pipeline("tiny-sd1"))
    {}
    """
    info: dict[str, Any] = {}
    lora_files = load_loras(pipe, loras)
    if lora_files:
        info[schema.LORAS_KEY] = [f.to_json() for f in lora_files]
    embedding_files = load_embeddings(pipe, embeddings)
    if embedding_files:
        info[schema.EMBEDDINGS_KEY] = [f.to_json() for f in embedding_files]
    return info

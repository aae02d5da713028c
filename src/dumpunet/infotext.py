"""A1111's generation parameters ("infotext") -> plain values: what ``record --infotext`` uses.

The AUTOMATIC1111 web UI writes the parameters of every picture into the PNG's ``parameters``
text chunk (JPEG/WebP: the EXIF UserComment) and shows them under the picture::

    a cute girl, (pink hair:1.2)
    Negative prompt: lowres, bad anatomy
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1719471015, Size: 512x768, ...

The first lines are the prompt, a line starting ``Negative prompt:`` starts the negative
prompt (both may span lines), and the last line is ``Name: value`` pairs, a value in double
quotes when it holds a comma. This module reads that text the way A1111's own
``parse_generation_parameters`` does, with no torch and no evaluation of the text.

Examples
--------
>>> info = parse_infotext("a cat\\nNegative prompt: blurry\\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, "
...                       "Size: 512x768, Version: v1.10.1")
>>> info.prompt, info.negative_prompt, info.request_fields()["height"]
('a cat', 'blurry', 768)
>>> info.unused
('Version',)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dumpunet.errors import InfotextError

__all__ = ["IMAGE_SUFFIXES", "Infotext", "image_infotext", "model_hash_note", "parse_infotext", "read_infotext"]

# A1111's modules/infotext_utils.py: re_param_code, re_imagesize
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".avif")
"""Suffixes of the image files A1111 writes its parameters into."""


def _int(value: str) -> int:
    return int(value)


def _float(value: str) -> float:
    return float(value)


def _size(value: str) -> tuple[int, int]:
    m = _SIZE.match(value)
    if m is None:
        raise ValueError
    return int(m[1]), int(m[2])


def _emphasis(value: str) -> str:
    mode = "-".join(value.lower().split())
    if mode not in ("original", "no-norm", "ignore", "none"):
        raise ValueError
    return mode


_FIELDS: dict[str, tuple[tuple[str, ...], Callable[[str], Any], str]] = {
    "Steps": (("sampling_steps",), _int, "a whole number"),
    "Sampler": (("sampler",), str, "a sampler name"),
    "Schedule type": (("schedule",), str, "a schedule type"),
    "CFG scale": (("cfg",), _float, "a number"),
    "Seed": (("seed",), _int, "a whole number"),
    "Size": (("width", "height"), _size, "WIDTHxHEIGHT, e.g. 512x768"),
    "Clip skip": (("clip_skip",), _int, "a whole number"),
    "Denoising strength": (("strength",), _float, "a number"),
    "Emphasis": (("emphasis",), _emphasis, "Original, No norm, Ignore or None"),
}
"""Infotext field -> the RecordRequest fields it sets, how its value is read, what it must look like."""

_CHECKED = ("Model hash", "Model")
"""Fields compared with the loaded model (:func:`model_hash_note`), not turned into options."""


def _unquote(value: str) -> str:
    # A1111 quotes with json.dumps; a value that is not valid JSON stays as written (as A1111 does)
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            out = json.loads(value)
        except ValueError:
            return value
        return out if isinstance(out, str) else value
    return value


@dataclass(frozen=True)
class Infotext:
    """One picture's A1111 generation parameters: prompt, negative prompt, and the fields as written."""

    prompt: str
    negative_prompt: str = ""
    params: Mapping[str, str] = field(default_factory=dict)  # field name -> value (unquoted), in order
    source: str = "pasted text"  # the image file it came from, for messages

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def hires(self) -> bool:
        """The picture had a Hires fix pass (whose Denoising strength is not an img2img strength)."""
        return any(k.startswith("Hires") for k in self.params)

    def _used(self, name: str) -> bool:
        if name == "Denoising strength" and self.hires:
            return False
        return name in _FIELDS or name in _CHECKED

    @property
    def unused(self) -> tuple[str, ...]:
        """Fields dumpunet does not use (Hires fix, ADetailer, Lora hashes, Version, ...), in order."""
        return tuple(k for k in self.params if not self._used(k))

    def warning(self) -> str | None:
        """The one line that names every unused field, or None when every field is used."""
        if not self.unused:
            return None
        return f"infotext fields not used: {', '.join(self.unused)}"

    def request_fields(self, given: Collection[str] = ()) -> dict[str, Any]:
        """The :class:`~dumpunet.recorder.request.RecordRequest` fields this infotext sets.

        Fields named in ``given`` (options the user gave) are left out: they win. The schedule
        type belongs to the sampler it was written with, so a given ``sampler`` leaves it out too.
        A value that does not read as its field must is an :class:`InfotextError`.
        """
        given = set(given)
        if "sampler" in given:
            given.add("schedule")
        out: dict[str, Any] = {}
        if "prompt" not in given:
            out["prompt"] = self.prompt
        if "negative_prompt" not in given:
            out["negative_prompt"] = self.negative_prompt
        for name, value in self.params.items():
            if name not in _FIELDS or not self._used(name):
                continue
            targets, read, expected = _FIELDS[name]
            try:
                parsed = read(value)
            except ValueError:
                raise InfotextError(f"{self.source}: infotext field {name} must be {expected}, got {value!r}") from None
            values = parsed if len(targets) > 1 else (parsed,)
            out.update((t, v) for t, v in zip(targets, values) if t not in given)
        return out

    @property
    def model_hash(self) -> str | None:
        """The ``Model hash`` field: A1111's short checkpoint hash (10 hex digits; 8 in old versions)."""
        return self.params.get("Model hash")


def parse_infotext(text: str, *, source: str = "pasted text") -> Infotext:
    """Read A1111 infotext as A1111's ``parse_generation_parameters`` does.

    The last line holds the parameters when at least three ``Name: value`` pairs read from it;
    otherwise every line is prompt text.

    Examples
    --------
    >>> info = parse_infotext('a cat\\nSteps: 20, Seed: 1, Lora hashes: "a: 12ab, b: 34cd", Size: 64x64')
    >>> dict(info.params)
    {'Steps': '20', 'Seed': '1', 'Lora hashes': 'a: 12ab, b: 34cd', 'Size': '64x64'}
    """
    lines = text.strip().split("\n")
    if not text.strip():
        raise InfotextError(f"{source}: the infotext is empty")
    last = lines[-1]
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines[:-1]:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        (negative if in_negative else prompt).append(line)
    params = {key.strip(): _unquote(value.strip()) for key, value in _PARAM.findall(last)}
    return Infotext("\n".join(prompt), "\n".join(negative), params, source)


def _user_comment(raw: Any) -> str:
    """EXIF UserComment -> text: an 8-byte charset prefix, then the text (A1111: ``UNICODE``, UTF-16 big-endian)."""
    if isinstance(raw, str):
        return raw
    head, body = bytes(raw[:8]), bytes(raw[8:])
    if head == b"UNICODE\0":
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16")
        return body.decode("utf-16-be")
    return body.decode("utf-8")


def image_infotext(path: str | os.PathLike[str]) -> str:
    """The A1111 parameters text an image carries (PNG text chunk, else EXIF UserComment).

    Raises :class:`InfotextError` when the file cannot be read as an image or holds no parameters.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
            if text is None and hasattr(im, "text"):  # PNG text chunks after the image data
                text = im.text.get("parameters")
            if text is None:
                comment = im.getexif().get_ifd(0x8769).get(0x9286)  # Exif IFD, UserComment
                text = _user_comment(comment) if comment else None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InfotextError(f"cannot read {path} as an image: {reason}") from None
    if text is None or not str(text).strip():
        raise InfotextError(f"{path} holds no A1111 parameters (no 'parameters' text chunk and no EXIF UserComment)")
    return str(text)


def read_infotext(source: str | os.PathLike[str]) -> Infotext:
    """Read A1111 parameters from an image file or from pasted infotext.

    A path (or a one-line string naming an existing file) is read as an image; a one-line
    string that ends in an image suffix but names no file is an error, not a prompt.

    Examples
    --------
    >>> read_infotext("a cat\\nSteps: 20, Sampler: Euler, Seed: 3").params["Sampler"]
    'Euler'
    """
    if isinstance(source, str) and ("\n" in source or not source.strip()):
        return parse_infotext(source)
    path = Path(source)
    if path.is_file():
        return parse_infotext(image_infotext(path), source=str(path))
    if not isinstance(source, str) or path.suffix.lower() in IMAGE_SUFFIXES:
        raise InfotextError(f"no image file at {source}")
    return parse_infotext(source)


def _legacy_hash(path: Path) -> str:
    """A1111's old 8-digit model hash: sha256 of the 64 KiB at offset 1 MiB."""
    with path.open("rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def model_hash_note(info: Infotext, model: Mapping[str, Any]) -> str | None:
    """A line about the infotext's ``Model hash`` against the loaded model, or None when they match.

    ``model`` is the loader's metadata (``file_sha256`` and ``path`` for a checkpoint file). A1111's
    hash is the first 10 hex digits of the file's sha256 (8 digits of another hash in versions
    before 1.0); a checkpoint whose hash differs gets a warning, a model that is not a
    checkpoint file a note that the hash was not checked.
    """
    expected = (info.model_hash or "").lower()
    if not expected:
        return None
    named = f"Model hash {expected}" + (f" (Model: {info.params['Model']})" if info.params.get("Model") else "")
    digest, path = model.get("file_sha256"), model.get("path")
    if not digest or not path:
        return f"note: the infotext's {named} is not checked: {model.get('name', 'the model')} is not a checkpoint file"
    actual = _legacy_hash(Path(path)) if len(expected) == 8 else str(digest)[: max(10, len(expected))]
    if actual == expected:
        return None
    return f"warning: the infotext's {named} does not match {Path(path).name} (hash {actual}); recording with the loaded model"

r"""A1111's extra-network tags in a prompt: ``<lora:NAME:WEIGHT>``.

Behaviour re-derived from the web UI (``modules/extra_networks.py`` and the built-in Lora
extension's ``extra_networks_lora.py``):

- A tag is ``<KIND:ARGS>`` with ``KIND`` a word; every tag is cut out of the prompt text before
  anything else reads it (emphasis, ``BREAK``, prompt editing), leaving the text around it as it
  was: ``a <lora:x:1> girl`` is encoded as ``a  girl``.
- ``ARGS`` splits at ``:``; an item ``key=value`` is named, any other positional. For a LoRA the
  first positional item is its name (the file name without extension), the second the text
  encoder weight (default 1.0), the third the U-Net weight (default: the text encoder weight);
  ``te=`` and ``unet=`` name them. ``lyco`` is another spelling of ``lora`` (as in A1111).
- dumpunet loads LoRAs only: any other kind (``<hypernet:...>``) is refused, since leaving it
  out would give another picture than A1111; so is the ``dyn`` argument (LyCORIS dynamic rank).

A LoRA changes the whole U-Net and text encoder, so a tag inside a per-block group
``(~: ... :~)`` is refused (:func:`check_outside_groups`).

Examples
--------
>>> p = extract_networks("a <lora:pink_hair:0.8> girl, <lora:style:1:0.5>")
>>> p.text
'a  girl, '
>>> [(t.name, t.te_weight, t.unet_weight) for t in p.loras]
[('pink_hair', 0.8, 0.8), ('style', 1.0, 0.5)]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dumpunet.errors import SyntaxErrorWithCaret

__all__ = ["LORA_KINDS", "LoraTag", "NetworkPrompt", "NetworkTagError", "check_outside_groups", "extract_networks"]

LORA_KINDS = ("lora", "lyco")
"""Tag kinds that name a LoRA (A1111 reads ``lyco`` as ``lora``)."""

_TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's re_extra_net


class NetworkTagError(SyntaxErrorWithCaret, ValueError):
    """An extra-network tag dumpunet cannot honour (another kind, a bad weight, inside a group)."""

    kind = "bad extra-network tag"


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:...>`` tag: the LoRA's name, its text encoder and U-Net weights, where it stood."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0
    text: str = ""  # the tag as written
    pos: int = 0  # its position in the prompt

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "te_weight": self.te_weight, "unet_weight": self.unet_weight, "tag": self.text}


@dataclass(frozen=True)
class NetworkPrompt:
    """A prompt with its extra-network tags cut out: the text the encoder reads, and the LoRAs."""

    text: str
    loras: tuple[LoraTag, ...] = ()


def _weight(value: str, what: str, source: str, pos: int, length: int) -> float:
    try:
        w = float(value)
    except ValueError:
        w = math.nan
    if not math.isfinite(w):
        raise NetworkTagError(f"the {what} weight {value!r} is not a number", source, pos, length=length)
    return w


def _lora(m: re.Match[str], source: str) -> LoraTag:
    pos, length = m.start(), m.end() - m.start()
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in m.group(2).split(":"):
        key, eq, value = item.partition("=")
        if eq:
            named[key.strip()] = value
        else:
            positional.append(item)
    unknown = sorted(set(named) - {"te", "unet"})
    if "dyn" in unknown or len(positional) > 3:
        raise NetworkTagError("dyn (LyCORIS dynamic rank) is not supported; give NAME, te and unet weights only",
                              source, pos, length=length)
    if unknown:
        raise NetworkTagError(f"unknown argument(s) {', '.join(unknown)}; a LoRA tag takes te= and unet=",
                              source, pos, length=length)
    if not positional or not positional[0].strip():
        raise NetworkTagError("the tag names no LoRA: write <lora:NAME:WEIGHT>", source, pos, length=length)
    te = _weight(positional[1], "text encoder", source, pos, length) if len(positional) > 1 else 1.0
    te = _weight(named["te"], "text encoder", source, pos, length) if "te" in named else te
    unet = _weight(positional[2], "U-Net", source, pos, length) if len(positional) > 2 else te
    unet = _weight(named["unet"], "U-Net", source, pos, length) if "unet" in named else unet
    return LoraTag(positional[0].strip(), te, unet, m.group(0), pos)


def extract_networks(prompt: str) -> NetworkPrompt:
    """Cut every ``<kind:args>`` tag out of ``prompt``; return the remaining text and the LoRA tags.

    Raises :class:`NetworkTagError` for a kind other than ``lora``/``lyco`` or a malformed LoRA tag.

    Examples
    --------
    >>> extract_networks("x <lora:a:te=0.5:unet=0.25>").loras[0].unet_weight
    0.25
    >>> extract_networks("x <hypernet:h:1>")
    Traceback (most recent call last):
    ...
    dumpunet.a1111_networks.NetworkTagError: bad extra-network tag: '<hypernet:...>' is not supported: dumpunet loads LoRAs only (<lora:NAME:WEIGHT>)
      x <hypernet:h:1>
        ^^^^^^^^^^^^^^
    """
    loras: list[LoraTag] = []
    for m in _TAG.finditer(prompt):
        if m.group(1) not in LORA_KINDS:
            raise NetworkTagError(f"'<{m.group(1)}:...>' is not supported: dumpunet loads LoRAs only (<lora:NAME:WEIGHT>)",
                                  prompt, m.start(), length=m.end() - m.start())
        loras.append(_lora(m, prompt))
    return NetworkPrompt(_TAG.sub("", prompt), tuple(loras))


def check_outside_groups(prompt: str, spans: Sequence[tuple[int, int]]) -> None:
    """Refuse an extra-network tag inside one of ``spans`` (the per-block groups of ``prompt``)."""
    for m in _TAG.finditer(prompt):
        if any(start <= m.start() < end for start, end in spans):
            raise NetworkTagError(
                "a LoRA changes the whole U-Net and text encoder, not one block: put the tag outside the (~: :~) group",
                prompt, m.start(), length=m.end() - m.start())

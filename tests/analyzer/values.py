"""Tests write options as keywords; this splits them into the analysis values the API takes."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from dumpunet import ColorSpec, GridStyle, Pick


def split(kw: dict[str, Any], color: ColorSpec | None = None) -> tuple[Pick, ColorSpec, GridStyle, dict[str, Any]]:
    """(Pick, ColorSpec, GridStyle, the other keywords) of keyword options; colour fields override ``color``."""
    rest = dict(kw)

    def take(cls):
        return {f.name: rest.pop(f.name) for f in fields(cls) if f.init and f.name in rest}

    pick = Pick(**take(Pick))
    colors = take(ColorSpec)
    base = color or ColorSpec()
    spec = ColorSpec(**{**{f.name: getattr(base, f.name) for f in fields(ColorSpec) if f.init}, **colors})
    return pick, spec, GridStyle(**take(GridStyle)), rest

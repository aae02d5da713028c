"""Typed access to one JSON attribute document, naming the path of a bad field in every error."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from dumpunet.errors import StoreError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
"""What a run, block or layer name read from a store may look like: it becomes part of file
names, so no separators, no ``..``, nothing hidden."""


class Fields:
    """Typed access to one attribute dict, naming ``where`` and the key in every error."""

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, Mapping):
            raise StoreError(f"{where}: attributes must be a JSON object, got {type(doc).__name__}")
        self.doc = doc
        self.where = where
        self.used: set[str] = set()

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self.used.add(key)
        if key not in self.doc or self.doc[key] is None:
            if required:
                raise StoreError(f"{self.where}: attribute {key!r} is missing")
            return default
        return self.doc[key]

    def _bad(self, key: str, want: str, got: Any) -> StoreError:
        shown = repr(got)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return StoreError(f"{self.where}: attribute {key!r} must be {want}, got {shown}")

    def int(self, key: str, default: int | None = None, *, required: bool = False, minimum: int | None = None) -> Any:
        v = self._get(key, default, required)
        if v is default:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(key, "an integer", v)
        if minimum is not None and v < minimum:
            raise self._bad(key, f"at least {minimum}", v)
        return v

    def float(self, key: str, default: float | None = None) -> Any:
        v = self._get(key, default, False)
        if v is default:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self._bad(key, "a finite number", v)
        return float(v)

    def str(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        v = self._get(key, default, required)
        if v is not default and not isinstance(v, str):
            raise self._bad(key, "a string", v)
        return v

    def bool(self, key: str, default: bool = False) -> bool:
        v = self._get(key, default, False)
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def obj(self, key: str) -> dict[str, Any]:
        v = self._get(key, {}, False)
        if not isinstance(v, Mapping):
            raise self._bad(key, "a JSON object", v)
        return dict(v)

    def list(self, key: str, *, required: bool = False) -> list[Any]:
        v = self._get(key, [], required)
        if not isinstance(v, list):
            raise self._bad(key, "a list", v)
        return v

    def ints(self, key: str, *, length: int | None = None, required: bool = False) -> tuple[int, ...] | None:
        if key not in self.doc and not required:
            self.used.add(key)
            return None
        v = self.list(key, required=required)
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v) or (length is not None and len(v) != length):
            raise self._bad(key, f"a list of {length or 'some'} non-negative integers", v)
        return tuple(v)

    def strs(self, key: str, *, names: bool = False) -> tuple[str, ...]:
        v = self.list(key)
        if not all(isinstance(x, str) for x in v):
            raise self._bad(key, "a list of strings", v)
        if names:
            for x in v:
                check_name(x, f"{self.where}: attribute {key!r}")
        return tuple(v)

    def extra(self) -> dict[str, Any]:
        return {k: v for k, v in self.doc.items() if k not in self.used}


def check_name(name: Any, where: str) -> str:
    """Return ``name`` if it may name a run, block or layer (it ends up in file names)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise StoreError(f"{where}: {name!r} is not a valid name (letters, digits, _ . + - only)")
    return name


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}

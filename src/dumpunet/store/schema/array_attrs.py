"""The attributes of per-call arrays as typed values (see :mod:`.attrs` for the conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dumpunet.store.schema.fields import Fields, drop_none

__all__ = ["ArrayAttrs", "LayerAttrs"]


@dataclass(frozen=True)
class ArrayAttrs:
    """Attributes every per-call array carries: what it is and, if recorded at fewer steps, which."""

    description: str = ""
    recorded_steps: str | None = None  # spec grammar; other calls of the array are never written
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return drop_none({**self.extra, "description": self.description, "recorded_steps": self.recorded_steps})

    @classmethod
    def from_json(cls, doc: Any, where: str) -> ArrayAttrs:
        f = Fields(doc, where)
        return cls(description=f.str("description", ""), recorded_steps=f.str("recorded_steps") or None, extra=f.extra())


@dataclass(frozen=True)
class LayerAttrs:
    """Attributes of an attention array (``runs/<run>/attention/<layer>/<feature>``)."""

    layer_hw: tuple[int, int]  # height, width of the layer's feature map
    module: str = ""  # the diffusers attention module
    cross_attention: bool = True
    query_rows: tuple[int, ...] | None = None  # self-attention: the query pixels kept
    query_cols: tuple[int, ...] | None = None
    heads: str = "all"  # self-attention: "all", or "mean" (the head axis has length 1)
    recorded_steps: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return drop_none({
            **self.extra,
            "description": self.description or None,
            "layer_hw": list(self.layer_hw),
            "module": self.module,
            "cross_attention": self.cross_attention,
            "query_rows": list(self.query_rows) if self.query_rows is not None else None,
            "query_cols": list(self.query_cols) if self.query_cols is not None else None,
            "heads": None if self.cross_attention else self.heads,
            "recorded_steps": self.recorded_steps,
        })

    @classmethod
    def from_json(cls, doc: Any, where: str) -> LayerAttrs:
        f = Fields(doc, where)
        hw = f.ints("layer_hw", length=2, required=True)
        assert hw is not None
        heads = f.str("heads", "all")
        if heads not in ("all", "mean"):
            raise f._bad("heads", "'all' or 'mean'", heads)
        rows, cols = f.ints("query_rows"), f.ints("query_cols")
        for key, got, limit in (("query_rows", rows, hw[0]), ("query_cols", cols, hw[1])):
            if got is not None and any(v >= limit for v in got):
                raise f._bad(key, f"pixel indices below {limit}", list(got))
        return cls(
            layer_hw=(hw[0], hw[1]),
            module=f.str("module", ""),
            cross_attention=f.bool("cross_attention", True),
            query_rows=rows,
            query_cols=cols,
            heads=heads,
            recorded_steps=f.str("recorded_steps") or None,
            description=f.str("description", ""),
            extra=f.extra(),
        )

    @property
    def queries(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The query pixels' rows and columns (every pixel unless a region or stride was recorded)."""
        h, w = self.layer_hw
        return (self.query_rows or tuple(range(h)), self.query_cols or tuple(range(w)))

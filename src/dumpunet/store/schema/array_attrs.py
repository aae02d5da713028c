"""The attributes of per-call arrays as typed values (see :mod:`.attrs` for the conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dumpunet.errors import SelectionError
from dumpunet.specs import format_ints
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
    heads: str = "all"  # "all", or "mean" (the head axis has length 1)
    kept_tokens: tuple[int, ...] | None = None  # cross-attention qk, k (1.2): the token positions of the token axis
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
            "heads": None if self.cross_attention and self.heads == "all" else self.heads,
            "kept_tokens": list(self.kept_tokens) if self.kept_tokens is not None else None,
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
        kept = f.ints("kept_tokens")
        if kept is not None and (not kept or list(kept) != sorted(set(kept))):
            raise f._bad("kept_tokens", "ascending distinct token positions", list(kept))
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
            kept_tokens=kept,
            recorded_steps=f.str("recorded_steps") or None,
            description=f.str("description", ""),
            extra=f.extra(),
        )

    @property
    def queries(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The query pixels' rows and columns (every pixel unless a region or stride was recorded)."""
        h, w = self.layer_hw
        return (self.query_rows or tuple(range(h)), self.query_cols or tuple(range(w)))

    def token_positions(self, n: int) -> tuple[int, ...]:
        """The prompt position of each of the ``n`` entries of the token axis (all tokens unless some were kept)."""
        return self.kept_tokens if self.kept_tokens is not None else tuple(range(n))

    def token_columns(self, positions: list[int], layer: str) -> list[int]:
        """The token-axis entries holding the prompt ``positions``; a :class:`SelectionError` for one not recorded.

        >>> info = LayerAttrs(layer_hw=(8, 8), kept_tokens=(1, 2, 5))
        >>> info.token_columns([2, 5], "IN01.attn2")
        [1, 2]
        >>> info.token_columns([3], "IN01.attn2")
        Traceback (most recent call last):
        ...
        dumpunet.errors.SelectionError: token 3 was not recorded at IN01.attn2: --attention-tokens kept 1-2,5
        """
        if self.kept_tokens is None:
            return list(positions)
        where = {p: i for i, p in enumerate(self.kept_tokens)}
        missing = [p for p in positions if p not in where]
        if missing:
            raise SelectionError(f"token {missing[0]} was not recorded at {layer}: --attention-tokens kept "
                                 f"{format_ints(self.kept_tokens)}")
        return [where[p] for p in positions]

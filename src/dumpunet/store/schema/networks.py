"""The LoRAs and textual-inversion embeddings a recording's model was loaded with (``model`` attributes).

``model.loras`` and ``model.embeddings`` are lists of :class:`NetworkFile` documents: which file,
its hashes, and (LoRAs) the text encoder and U-Net weights it was applied with. Absent or empty:
the model ran as loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dumpunet.store.schema.fields import Fields, drop_none

__all__ = ["EMBEDDINGS_KEY", "LORAS_KEY", "NetworkFile", "model_networks"]

LORAS_KEY = "loras"
EMBEDDINGS_KEY = "embeddings"


@dataclass(frozen=True)
class NetworkFile:
    """One LoRA or embedding file: its name (the file stem), path, hashes and weights.

    ``a1111_hash`` is the hash A1111 shows for the file (its first 12 hex digits in infotext's
    "Lora hashes"/"TI hashes"): for a ``.safetensors`` LoRA the sha256 of the bytes after the
    header ("addnet" hash), else the sha256 of the whole file.
    """

    name: str
    file: str
    sha256: str
    a1111_hash: str
    te_weight: float | None = None  # LoRAs only
    unet_weight: float | None = None
    vectors: int | None = None  # embeddings only: token positions the name takes
    source: str | None = None  # LoRAs: "--lora" or the prompt tag as written

    @property
    def short_hash(self) -> str:
        return self.a1111_hash[:12]

    def to_json(self) -> dict[str, Any]:
        return drop_none({
            "name": self.name, "file": self.file, "sha256": self.sha256, "a1111_hash": self.a1111_hash,
            "short_hash": self.short_hash, "te_weight": self.te_weight, "unet_weight": self.unet_weight,
            "vectors": self.vectors, "source": self.source,
        })

    @classmethod
    def from_json(cls, doc: Any, where: str) -> NetworkFile:
        f = Fields(doc, where)
        f.used.add("short_hash")
        return cls(
            name=f.str("name", required=True),
            file=f.str("file", ""),
            sha256=f.str("sha256", ""),
            a1111_hash=f.str("a1111_hash", ""),
            te_weight=f.float("te_weight"),
            unet_weight=f.float("unet_weight"),
            vectors=f.int("vectors", minimum=1),
            source=f.str("source"),
        )


def model_networks(model: Mapping[str, Any], where: str = "model") -> tuple[tuple[NetworkFile, ...], tuple[NetworkFile, ...]]:
    """The LoRAs and the embeddings recorded in a store's ``model`` attribute."""
    f = Fields(model, where)
    return tuple(
        tuple(NetworkFile.from_json(d, f"{where}.{key}[{i}]") for i, d in enumerate(f.list(key)))
        for key in (LORAS_KEY, EMBEDDINGS_KEY)
    )  # type: ignore[return-value]

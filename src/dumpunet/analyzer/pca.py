"""Colour each pixel by the first three principal components of its channel vector.

The view used in feature-visualization papers (e.g. Tumanyan et al., "Plug-and-Play Diffusion
Features", CVPR 2023, Fig. 2): a block's ``[C, H, W]`` map is read as ``H*W`` vectors of length
C; projecting them on the block's top three principal directions gives three numbers per pixel,
shown as R, G and B.

A *basis* holds, per block, the mean vector ``[C]``, the three components ``[3, C]`` (unit rows,
each signed so that its largest-magnitude entry is positive) and, per component, the range
``[lo, hi]`` (1st and 99th percentiles of the projections of the fitting pixels) mapped to
``[0, 1]``. A pixel is ``clip(((x - mean) . component - lo) / (hi - lo) * 256, 0, 255)``
truncated, NaN as 0, like every other colorization. Fitting once and reusing the basis across
steps and stores keeps colours comparable.

Fitting samples at most :data:`MAX_SAMPLES` pixels per block, evenly over the selected maps
(the choice is seeded by the block name, so the same data gives the same basis), and finds the
components by randomized subspace iteration (Halko, Martinsson and Tropp, SIAM Review 2011,
Algorithm 4.4, with 10 extra vectors and 4 power iterations; an exact SVD for small blocks).

Basis files are ``.npz`` without pickles: ``format`` (the text ``dumpunet-pca-basis/1``) and,
per block key (``OUT11``, or ``OUT11-input`` for block inputs), ``<key>.mean`` float32 ``[C]``,
``<key>.components`` float32 ``[3, C]``, ``<key>.range`` float64 ``[3, 2]`` and ``<key>.meta``
(a JSON text saying what it was fitted on).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((8, 4, 4)).astype(np.float32)
>>> basis = fit_basis(x.reshape(8, -1).T)
>>> basis.project(x).shape
(4, 4, 3)
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dumpunet.errors import OptionError, OutputError
from dumpunet.files import os_error_advice, write_atomic

__all__ = ["MAX_SAMPLES", "Basis", "BlockBasis", "basis_key", "fit_basis", "sample_pixels"]

MAX_SAMPLES = 16384
PERCENTILES = (1.0, 99.0)
FORMAT = "dumpunet-pca-basis/1"


def basis_key(block: str, which: str = "output") -> str:
    """The basis entry of a block's outputs (``OUT11``) or inputs (``OUT11-input``)."""
    return block if which == "output" else f"{block}-{which}"


@dataclass(frozen=True)
class BlockBasis:
    """The PCA colour basis of one block."""

    mean: np.ndarray  # float32 [C]
    components: np.ndarray  # float32 [3, C]
    range: np.ndarray  # float64 [3, 2]: lo, hi per component
    meta: dict[str, Any]

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def digest(self) -> str:
        """6 hex digits of sha256 over the basis numbers: equal digests give equal colours."""
        h = hashlib.sha256()
        for a in (self.mean, self.components, self.range):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:6]

    def project(self, x: np.ndarray) -> np.ndarray:
        """Colour a map ``[C, H, W]``: return uint8 ``[H, W, 3]``."""
        c, h, w = x.shape
        if c != self.channels:
            raise ValueError(f"the basis has {self.channels} channels, the map {c}")
        flat = np.asarray(x, dtype=np.float32).reshape(c, h * w)
        with np.errstate(all="ignore"):
            p = self.components @ flat - (self.components @ self.mean)[:, None]
            lo, hi = self.range[:, :1], self.range[:, 1:]
            width = np.where(hi > lo, hi - lo, np.nan)
            y = (p - lo) / width * 256.0
            pixels = np.where(y > 0.0, np.minimum(y, 255.0), 0.0).astype(np.uint8)
        return np.ascontiguousarray(pixels.T).reshape(h, w, 3)


def sample_pixels(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Return up to ``count`` pixel vectors ``[n, C]`` (float64) of a map ``[C, H, W]``, chosen by ``rng``."""
    c = x.shape[0]
    flat = x.reshape(c, -1)
    p = flat.shape[1]
    idx = np.arange(p) if count >= p else np.sort(rng.choice(p, size=count, replace=False))
    return flat[:, idx].T.astype(np.float64)


def _top_components(xc: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` right singular vectors ``[k, C]`` of centred data ``[n, C]``."""
    n, c = xc.shape
    if min(n, c) <= 256:
        return np.linalg.svd(xc, full_matrices=False)[2][:k]
    rng = np.random.default_rng(0)
    q = np.linalg.qr(xc @ rng.standard_normal((c, k + 10)))[0]
    for _ in range(4):
        q = np.linalg.qr(xc.T @ q)[0]
        q = np.linalg.qr(xc @ q)[0]
    return np.linalg.svd(q.T @ xc, full_matrices=False)[2][:k]


def fit_basis(samples: np.ndarray, meta: dict[str, Any] | None = None) -> BlockBasis:
    """Fit a block basis to pixel vectors ``[n, C]``; rows with NaN or inf are left out."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    n, c = x.shape
    components = np.zeros((3, c))
    mean = x.mean(axis=0) if n else np.zeros(c)
    xc = x - mean
    k = min(3, n, c)
    if k:
        top = _top_components(xc, k)
        pivot = np.abs(top).argmax(axis=1)
        top *= np.where(top[np.arange(k), pivot] < 0, -1.0, 1.0)[:, None]
        components[:k] = top
    mean32, comp32 = mean.astype(np.float32), components.astype(np.float32)
    if n:
        proj = (x.astype(np.float32) @ comp32.T - comp32 @ mean32).astype(np.float64)
        bounds = np.percentile(proj, PERCENTILES, axis=0).T
    else:
        bounds = np.zeros((3, 2))
    return BlockBasis(mean32, comp32, np.ascontiguousarray(bounds), {"samples": int(n), **(meta or {})})


class Basis(dict[str, BlockBasis]):
    """Block key -> :class:`BlockBasis`; :meth:`load` and :meth:`save` read and write basis files."""

    @classmethod
    def load(cls, path: Path) -> Basis:
        bad = OptionError(f"{path} is not a dumpunet PCA basis file (expected {FORMAT} .npz)")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) != FORMAT:
                    raise bad
                arrays = {name: z[name] for name in z.files}
        except PermissionError as exc:
            raise OptionError(f"cannot read the PCA basis {path}: {exc.strerror}") from None
        except (OSError, ValueError, TypeError, AttributeError, zipfile.BadZipFile, EOFError):
            raise bad from None  # TypeError, AttributeError: a .npy, not an .npz
        out = cls()
        for name in arrays:
            if not name.endswith(".mean"):
                continue
            key = name[: -len(".mean")]
            try:
                raw = [arrays[f"{key}.{part}"] for part in ("mean", "components", "range")]
                meta = json.loads(str(arrays[f"{key}.meta"]))
            except (KeyError, ValueError):
                raise bad from None
            if any(a.dtype.kind not in "fiu" for a in raw):  # structured, text or object: not a basis
                raise OptionError(f"{path} is not a dumpunet PCA basis file: the arrays of {key!r} are not numbers")
            mean, comp, rng = raw[0].astype(np.float32), raw[1].astype(np.float32), raw[2].astype(np.float64)
            if mean.ndim != 1 or comp.shape != (3, mean.shape[0]) or rng.shape != (3, 2) or not isinstance(meta, dict):
                raise bad
            out[key] = BlockBasis(mean, comp, rng, meta)
        return out

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT)}
        for key, b in sorted(self.items()):
            arrays[f"{key}.mean"] = b.mean
            arrays[f"{key}.components"] = b.components
            arrays[f"{key}.range"] = b.range
            arrays[f"{key}.meta"] = np.array(json.dumps(b.meta, sort_keys=True))
        try:
            write_atomic(Path(path), lambda fh: np.savez(fh, **arrays))
        except OSError as exc:
            raise OutputError(f"cannot save the PCA basis {path}: {os_error_advice(exc)} (or give another --pca-basis)") from None


def seeded_rng(key: str) -> np.random.Generator:
    """The sampling generator of a block: the same for the same block name, run after run."""
    return np.random.default_rng(zlib.crc32(key.encode()))

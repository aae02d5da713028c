"""dumpunet: record what every Stable Diffusion U-Net block does, then render it offline.

Public API: :func:`open`, :func:`render`, :func:`diff`, :func:`export` and :func:`heatmap` (no
torch needed) and :func:`record` (needs the ``record`` extra).
"""

from __future__ import annotations

from typing import Any

from dumpunet._version import __version__
from dumpunet.store import Store, open_store

__all__ = ["Store", "diff", "export", "heatmap", "open", "record", "render", "__version__"]

open = open_store  # noqa: A001 - dumpunet.open(path) is the documented entry point


def heatmap(store: Store, word: str, **options: Any) -> Any:
    """Return a DAAM-style heatmap ``[H, W]`` in [0, 1] of where ``word`` acts in a store's run.

    Options: ``layers``, ``steps`` (specs), ``guidance``, ``image``, ``run``; see
    :func:`dumpunet.analyzer.heatmap.word_heatmap`.

    Examples
    --------
    >>> dumpunet.heatmap(dumpunet.open("girl.zarr"), "hair", steps="1-10").shape  # doctest: +SKIP
    (512, 512)
    """
    from dumpunet.analyzer.heatmap import word_heatmap

    return word_heatmap(store, word, **options)


def __getattr__(name: str) -> Any:
    # render, diff and export load numba and the kernels, record loads torch: import them on
    # first use, keeping ``import dumpunet`` and ``dumpunet --help`` fast (and torch optional).
    if name == "record":
        from dumpunet.recorder.recorder import record

        return record
    if name == "render":
        from dumpunet.analyzer.render import render

        return render
    if name == "diff":
        from dumpunet.analyzer.diff import diff

        return diff
    if name == "export":
        from dumpunet.analyzer.export import export

        return export
    raise AttributeError(f"module 'dumpunet' has no attribute {name!r}")

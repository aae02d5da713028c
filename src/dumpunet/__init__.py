"""dumpunet: record what every Stable Diffusion U-Net block does, then render it offline.

Public API: :func:`open`; the analysis values :class:`Pick` (what to read), :class:`ColorSpec`
(how to colour) and :class:`GridStyle` (tile scale, channel average, PCA basis, labels or plain);
:func:`render_image` (one grid as an array), :func:`render`, :func:`diff`, :func:`export`,
:func:`export_attention`, :func:`attention` and :func:`heatmap` (no torch needed); :func:`open_dataset`
(stores as lazy xarray datasets, the ``dask`` extra); :func:`view` (the viewer in a notebook cell, also ``store.show()``); and :func:`record` (needs the ``record`` extra).

Examples
--------
>>> import dumpunet
>>> dumpunet.Pick(blocks="OUT11", steps="20").blocks
'OUT11'
"""

from __future__ import annotations

from typing import Any

from dumpunet._version import __version__
from dumpunet.store import Store, open_store

__all__ = [
    "ColorSpec", "GridStyle", "Pick", "Store", "attention", "diff", "export", "export_attention", "heatmap", "open", "open_dataset", "record",
    "render", "render_image", "view", "__version__",
]

open = open_store  # noqa: A001 - dumpunet.open(path) is the documented entry point


# The analysis API loads numba and the kernels, record loads torch: import them on first use,
# keeping ``import dumpunet`` and ``dumpunet --help`` fast (and torch optional).
_LAZY = {
    "record": "dumpunet.recorder.recorder:record",
    "Pick": "dumpunet.analyzer.pick:Pick",
    "ColorSpec": "dumpunet.analyzer.color.spec:ColorSpec",
    "GridStyle": "dumpunet.analyzer.style:GridStyle",
    "render": "dumpunet.analyzer.render:render",
    "render_image": "dumpunet.analyzer.render:render_image",
    "diff": "dumpunet.analyzer.diff:diff",
    "export": "dumpunet.analyzer.export:export",
    "export_attention": "dumpunet.analyzer.attention_export:export_attention",
    "attention": "dumpunet.analyzer.attention_grids:render_attention",
    "heatmap": "dumpunet.analyzer.heatmap:word_heatmap",
    "view": "dumpunet.viewer.notebook:view",
    "open_dataset": "dumpunet.store.dataset:open_dataset",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dumpunet' has no attribute {name!r}")

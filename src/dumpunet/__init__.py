"""dumpunet: record what every Stable Diffusion U-Net block does, then render it offline.

Public API: :func:`open` (no torch needed) and :func:`record` (needs the ``record`` extra).
"""

from __future__ import annotations

from typing import Any

from dumpunet.store import Store, open_store

__version__ = "0.1.0"
__all__ = ["Store", "open", "record", "__version__"]

open = open_store  # noqa: A001 - dumpunet.open(path) is the documented entry point


def record(pipe: Any, path: Any, **options: Any) -> Any:
    """Record a diffusers pipeline's U-Net blocks into a store; see :func:`dumpunet.recorder.session.record`."""
    from dumpunet.recorder.session import record as _record

    return _record(pipe, path, **options)

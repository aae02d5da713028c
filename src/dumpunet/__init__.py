"""dumpunet: record what every Stable Diffusion U-Net block does, then render it offline."""

from __future__ import annotations

__version__ = "0.1.0"

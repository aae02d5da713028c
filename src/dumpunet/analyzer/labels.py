"""Text on images: headers for attention grids, captions for contact sheets.

Uses Pillow's built-in font (no font files, no network); with FreeType it scales to any size,
without it Pillow's fixed bitmap font is used.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_SIZE = 11
MIN_SPACE = 4
"""Pixels a space takes at least. Pillow's default FreeType font (Aileron) draws a space 2 px wide at
11 px, so a number ran into the next word (``0.005524to``); each space is drawn as as many spaces
as reach this width."""


@lru_cache(maxsize=8)
def font(size: int = LABEL_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


@lru_cache(maxsize=8)
def _space(size: int) -> str:
    """What one space is drawn as: enough spaces of the font to be :data:`MIN_SPACE` pixels wide."""
    width = font(size).getlength(" ")
    return " " * max(1, math.ceil(MIN_SPACE / width)) if width > 0 else " "


def spaced(text: str, size: int = LABEL_SIZE) -> str:
    """``text`` as it is drawn: each space widened to at least :data:`MIN_SPACE` pixels."""
    return text.replace(" ", _space(size))


def text_box(text: str, size: int = LABEL_SIZE) -> tuple[int, int]:
    """Width and height in pixels that ``text`` takes (one line)."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), spaced(text, size), font=font(size))
    return right - min(0, left), bottom - min(0, top)


def text_image(text: str, *, size: int = LABEL_SIZE, vertical: bool = False, pad: int = 2) -> np.ndarray:
    """White text on black as uint8 ``[H, W]``; ``vertical`` turns it to read bottom-up."""
    w, h = text_box(text, size)
    img = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)
    ImageDraw.Draw(img).text((pad, pad), spaced(text, size), fill=255, font=font(size))
    if vertical:
        img = img.transpose(Image.Transpose.ROTATE_90)
    return np.asarray(img)


def paste(canvas: np.ndarray, glyphs: np.ndarray, y: int, x: int) -> None:
    """Copy white-on-black text into an uint8 canvas (gray or RGB), clipped at its edges."""
    h = min(glyphs.shape[0], canvas.shape[0] - y)
    w = min(glyphs.shape[1], canvas.shape[1] - x)
    if h <= 0 or w <= 0:
        return
    g = glyphs[:h, :w]
    region = canvas[y : y + h, x : x + w]
    if canvas.ndim == 3:
        g = g[:, :, None]
    np.maximum(region, g, out=region)

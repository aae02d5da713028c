"""A line chart drawn with Pillow alone: the picture of a difference summary.

One line per series (x ascending), each in its own colour from :data:`PALETTE`, on a white
plot with labelled axes, ticks and grid lines, and a legend at the right that lists the series
by their peak, largest first. Colours go out in legend order, so the series that changed most
get the most distinct colours, and those lines are drawn last (on top). Non-finite points are
left out (the line breaks there). Lines, markers and legend swatches are drawn without
anti-aliasing (only text is smoothed), so each holds exactly its palette colour.

Examples
--------
>>> img, legend = line_chart({"M00": ([1, 5], [0.1, 0.4]), "OUT11": ([1, 5], [0.2, 0.3])})
>>> img.shape, [(e["label"], e["color"]) for e in legend]
((500, 900, 3), [('M00', '#1f77b4'), ('OUT11', '#ff7f0e')])
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dumpunet.analyzer.labels import font, text_box

__all__ = ["PALETTE", "color_of", "line_chart", "nice_ticks"]

PALETTE = (
    # matplotlib's tab10, then Kelly's colours of maximum contrast (without white, black, grey)
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#f3c300", "#875692", "#a1caf1", "#be0032", "#c2b280", "#008856", "#e68fac", "#0067a5", "#f99379", "#604e97",
    "#f6a600", "#b3446c", "#dcd300", "#882d17", "#8db600", "#654522", "#e25822", "#2b3d26",
)

_TEXT = 12
_TITLE = 14
_INK = (0, 0, 0)
_GRID = (225, 225, 225)
_AXIS = (90, 90, 90)


def color_of(i: int) -> str:
    """The ``i``-th series colour: :data:`PALETTE`, then hues spaced by the golden angle."""
    if i < len(PALETTE):
        return PALETTE[i]
    r, g, b = colorsys.hls_to_rgb(((i - len(PALETTE)) * 0.618034) % 1.0, 0.45, 0.75)
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi].

    >>> nice_ticks(0, 0.37)
    [0.0, 0.1, 0.2, 0.3, 0.4]
    """
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n - 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (900, 500),
    integer_x: bool = True,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw ``{label: (xs, ys)}`` as lines; return the RGB image ``[H, W, 3]`` and the legend.

    The legend lists ``{"label", "color", "peak"}`` (peak: the largest finite y, None if none),
    largest peak first. The image is ``size`` (width, height), taller where the legend needs it.
    ``integer_x`` puts x ticks on whole numbers (steps).
    """
    peaks = {k: max((float(y) for y in ys if math.isfinite(y)), default=None) for k, (_, ys) in series.items()}
    order = sorted(series, key=lambda k: (peaks[k] is None, -(peaks[k] or 0.0)))
    legend = [{"label": k, "color": color_of(i), "peak": peaks[k]} for i, k in enumerate(order)]

    xs_all = [float(x) for xs, _ in series.values() for x in xs]
    ys_all = [float(y) for _, ys in series.values() for y in ys if math.isfinite(y)]
    x_lo, x_hi = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = nice_ticks(min([0.0, *ys_all]), max([0.0, *ys_all]))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    distinct_x = sorted(set(xs_all))
    if integer_x and len(distinct_x) <= 12:
        x_ticks = distinct_x
    else:
        x_ticks = [t for t in nice_ticks(x_lo, x_hi, 8) if x_lo <= t <= x_hi and (not integer_x or t == int(t))]

    line_h = text_box("Ag", _TEXT)[1]
    entry_h = line_h + 6
    legend_w = 40 + max((text_box(f"{e['label']}  {_fmt(e['peak'])}" if e["peak"] is not None else e["label"], _TEXT)[0]
                         for e in legend), default=0)
    width, height = size
    top = text_box(title or "A", _TITLE)[1] + 20
    height = max(height, top + entry_h * (len(legend) + 1) + 10)
    y_text_w = max(text_box(_fmt(t), _TEXT)[0] for t in y_ticks)
    left = 14 + line_h + 8 + y_text_w + 6
    right = width - legend_w - 20
    bottom = height - (2 * line_h + 24)

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    small = font(_TEXT)
    for t in y_ticks:
        y = round(py(t))
        draw.line([(left, y), (right, y)], fill=_GRID)
        w, h = text_box(_fmt(t), _TEXT)
        draw.text((left - 6 - w, y - h // 2 - 1), _fmt(t), fill=_INK, font=small)
    for t in x_ticks:
        x = round(px(t))
        draw.line([(x, bottom), (x, bottom + 4)], fill=_AXIS)
        label = str(int(t)) if integer_x else _fmt(t)
        w, _ = text_box(label, _TEXT)
        draw.text((x - w // 2, bottom + 6), label, fill=_INK, font=small)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=_AXIS)
    if title:
        w, _ = text_box(title, _TITLE)
        draw.text(((width - w) // 2, 8), title, fill=_INK, font=font(_TITLE))
    if x_label:
        w, _ = text_box(x_label, _TEXT)
        draw.text(((left + right - w) // 2, bottom + 10 + line_h), x_label, fill=_INK, font=small)
    if y_label:
        w, h = text_box(y_label, _TEXT)
        band = Image.new("L", (w + 4, h + 4), 0)
        ImageDraw.Draw(band).text((2, 2), y_label, fill=255, font=small)
        band = band.transpose(Image.Transpose.ROTATE_90)
        img.paste(_INK, (14, max(top, (top + bottom - band.height) // 2)), band)

    for e in reversed(legend):  # the largest changes last, on top
        xs, ys = series[e["label"]]
        segment: list[tuple[float, float]] = []
        for x, y in [*zip(xs, ys), (None, math.nan)]:
            if y is not None and math.isfinite(y):
                segment.append((px(float(x)), py(float(y))))
                continue
            if len(segment) > 1:
                draw.line(segment, fill=e["color"], width=2)
            for cx, cy in segment:
                draw.rectangle([cx - 2, cy - 2, cx + 2, cy + 2], fill=e["color"])
            segment = []

    lx = right + 20
    draw.text((lx, top - line_h - 6), "peak", fill=_AXIS, font=small)
    for i, e in enumerate(legend):
        y = top + i * entry_h
        draw.rectangle([lx, y + 2, lx + 24, y + line_h - 1], fill=e["color"])
        text = f"{e['label']}  {_fmt(e['peak'])}" if e["peak"] is not None else e["label"]
        draw.text((lx + 32, y), text, fill=_INK, font=small)
    return np.asarray(img), legend

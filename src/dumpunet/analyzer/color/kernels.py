"""Every numba kernel of the analyzer; plain-numpy references live in ``tests/analyzer/reference.py``.

Maps reach the kernels flattened to ``[N, P]`` (``P = H*W``), either as float32/float64 with
``half=None``, or as the raw bits of float16 (uint16; numba has no float16 on the CPU) with
``half`` the 65536-entry float32 decoding table. All arithmetic is float64 and follows the
original formulas operation for operation, without fastmath, so NaN and clamps behave as in
numpy and results are bit-identical to ``tests/analyzer/reference.py`` wherever no library function is
involved. Kernels run ``prange`` over maps and write into preallocated outputs; per map they
make passes simple enough for LLVM to vectorize (transform, then quantize or index, then
table lookups) into a per-map scratch row. The entry kernels release the GIL (``nogil``), so
a render's PNG-encoding threads keep running while the calling thread is inside a kernel.
The heatmap kernels (:func:`token_rows`, :func:`turbo_overlay`) are the exceptions: serial (they
wait on memory, and a parallel loop on a busy machine waits for its slowest thread), and in
float32 where the numpy expressions they reproduce bit for bit are float32 (heatmap's tests).

Value transforms (``code``; ``a, b, c, d`` are its parameters, ``mn, mx`` the map's range):

=============  ===================================================================================
AUTO01         ``(clamp(v, mn, mx) - mn) / (mx - mn)``; unchanged ``v`` if not ``mn < mx``
AUTO11         ``(AUTO01 - 0.5) * 2``
LINEAR         ``((clamp(v, a, b) - a) / (b - a) - 0.5) * 2``  (a, b = clamp min, max)
LINEAR_ABS     ``(|clamp(v, a, b)| - c) / (d - c)``  (White/Black; c, d = X, Y of the original)
SIGMOID        ``(1 / (1 + exp(-a * (v + b))) - 0.5) * 2``  (a = gain, b = offset)
=============  ===================================================================================

``absolute`` takes ``|t|`` afterwards (White/Black with SIGMOID, the original's sigmoid_abs).
A pixel channel is ``clip(x * 256, 0, 255)`` truncated, NaN as 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

AUTO01, AUTO11, LINEAR, SIGMOID, LINEAR_ABS = 0, 1, 2, 3, 4

# Elements per prange iteration where a flat loop is split into blocks.
_BLOCK = 4096


@njit(cache=True)
def _load(maps, i, j, half):
    if half is None:
        return np.float64(maps[i, j])
    return np.float64(half[maps[i, j]])


@njit(cache=True)
def _transform_row(maps, i, half, code, absolute, mn, mx, a, b, c, d, t):
    """t[j] = transform of maps[i, j]; one branch on ``code`` per row, not per element."""
    p = t.shape[0]
    if code == AUTO01 or code == AUTO11:
        if mn < mx:
            w = mx - mn
            for j in range(p):
                v = _load(maps, i, j, half)
                v = mn if v < mn else v
                v = mx if v > mx else v
                t[j] = (v - mn) / w
            if code == AUTO11:
                for j in range(p):
                    t[j] = (t[j] - 0.5) * 2.0
        else:
            for j in range(p):  # a constant map, or one without finite values: unchanged
                t[j] = _load(maps, i, j, half)
    elif code == LINEAR:
        for j in range(p):
            v = _load(maps, i, j, half)
            v = a if v < a else v
            v = b if v > b else v
            t[j] = ((v - a) / (b - a) - 0.5) * 2.0
    elif code == LINEAR_ABS:
        for j in range(p):
            v = _load(maps, i, j, half)
            v = a if v < a else v
            v = b if v > b else v
            t[j] = (abs(v) - c) / (d - c)
    else:
        for j in range(p):
            v = _load(maps, i, j, half)
            t[j] = (1.0 / (1.0 + np.exp(-a * (v + b))) - 0.5) * 2.0
    if absolute:
        for j in range(p):
            t[j] = abs(t[j])


@njit(cache=True)
def _quantize(x):
    y = x * 256.0
    y = 255.0 if y >= 255.0 else y
    y = y if y > 0.0 else 0.0  # negative or NaN
    return np.uint8(np.int32(y))


@njit(cache=True, nogil=True)
def ordered_ranges(bits, shift, magnitude, exponent, out):
    """Per map, the min and max *order keys* of the finite values, from the floats' bits.

    ``bits`` is the float array viewed as signed integers of its width; a key is
    ``b ^ ((b >> shift) & magnitude)``, whose integer order is the float order, so the
    reductions are integer min/max that vectorize. A value is finite unless all its
    ``exponent`` bits are set. Maps without finite values get (max key, min key). Serial: it
    runs at memory speed, and a parallel kernel would cost more to compile than it saves.
    """
    n, p = bits.shape
    top = np.int64(magnitude)
    for i in range(n):
        lo = top
        hi = -top
        for j in range(p):
            x = np.int64(bits[i, j])
            key = x ^ ((x >> shift) & magnitude)
            finite = (x & exponent) != exponent
            lo = min(lo, key if finite else top)
            hi = max(hi, key if finite else -top)
        out[i, 0] = lo
        out[i, 1] = hi


@njit(cache=True, parallel=True, nogil=True)
def colorize_gray(maps, half, ranges, code, absolute, a, b, c, d, out):
    """White/Black: out[i, j] = pixel of the transformed value (uint8 [N, P])."""
    n, p = maps.shape
    for i in prange(n):
        t = np.empty(p)
        _transform_row(maps, i, half, code, absolute, ranges[i, 0], ranges[i, 1], a, b, c, d, t)
        for j in range(p):
            out[i, j] = _quantize(t[j])


@njit(cache=True, parallel=True, nogil=True)
def colorize_red_blue(maps, half, ranges, code, a, b, c, d, out):
    """Red/Blue: (t, 0, 0) for t > 0, (0, 0, -t) for t < 0 (uint8 [N, P, 3])."""
    n, p = maps.shape
    for i in prange(n):
        t = np.empty(p)
        _transform_row(maps, i, half, code, False, ranges[i, 0], ranges[i, 1], a, b, c, d, t)
        for j in range(p):
            x = t[j]
            out[i, j, 0] = _quantize(x if x > 0.0 else 0.0)
            out[i, j, 1] = 0
            out[i, j, 2] = _quantize(-x if x < 0.0 else 0.0)


@njit(cache=True)
def _entry_row(t, limits, lo, hi, scale, e):
    """e[j] = row of the colour table for t[j] (2k for A, 2k+1 for B), or -1 if unproven."""
    cells = limits.shape[0] - 1
    for j in range(t.shape[0]):
        x = t[j]
        inside = (x >= lo) & (x <= hi)
        k = np.int32(((x if inside else lo) - lo) * scale)
        k = cells - 1 if k >= cells else k
        side_a = x <= limits[k, 0]
        side_b = x >= limits[k, 1]
        entry = 2 * k + np.int32(side_b) if (side_a | side_b) else np.int32(-1)
        e[j] = entry if inside else (np.int32(2 * cells) if x != x else np.int32(-1))


@njit(cache=True, parallel=True, nogil=True)
def colorize_lut(maps, half, ranges, code, a, b, c, d, limits, colors, lo, hi, scale, out, pending):
    """Custom: pixels from the proven table; pending[i] counts map i's pixels left unwritten.

    ``limits[k] = (t1, t2)``: cell k gives colour A for ``t <= t1``, B for ``t >= t2``;
    ``colors[2k]``/``colors[2k+1]`` are A/B packed as ``r | g << 8 | b << 16``; the last row
    is the colour of NaN.
    """
    n, p = maps.shape
    for i in prange(n):
        t = np.empty(p)
        e = np.empty(p, np.int32)
        _transform_row(maps, i, half, code, False, ranges[i, 0], ranges[i, 1], a, b, c, d, t)
        _entry_row(t, limits, lo, hi, scale, e)
        count = 0
        for j in range(p):
            entry = e[j]
            if entry < 0:
                count += 1
                continue
            rgb = colors[entry]
            out[i, j, 0] = np.uint8(rgb & 0xFF)
            out[i, j, 1] = np.uint8((rgb >> 8) & 0xFF)
            out[i, j, 2] = np.uint8(rgb >> 16)
        pending[i] = count


@njit(cache=True, parallel=True, nogil=True)
def gather_pending(maps, half, ranges, code, a, b, c, d, limits, lo, hi, scale, offsets, index, values):
    """Collect flat index and transformed value of every pixel that colorize_lut left unwritten."""
    n, p = maps.shape
    for i in prange(n):
        pos = offsets[i]
        if offsets[i + 1] == pos:
            continue
        t = np.empty(p)
        e = np.empty(p, np.int32)
        _transform_row(maps, i, half, code, False, ranges[i, 0], ranges[i, 1], a, b, c, d, t)
        _entry_row(t, limits, lo, hi, scale, e)
        for j in range(p):
            if e[j] < 0:
                index[pos] = i * p + j
                values[pos] = t[j]
                pos += 1


@njit(cache=True, parallel=True, nogil=True)
def apply_table(bits, table, out):
    """out[i, j, :] = table[bits[i, j], :]: a float16 map through a per-value pixel table."""
    n, p = bits.shape
    ch = table.shape[1]
    for i in prange(n):
        for j in range(p):
            k = bits[i, j]
            for c in range(ch):
                out[i, j, c] = table[k, c]


@njit(cache=True, parallel=True, nogil=True)
def channel_accumulate(x, half, kind, acc):
    """acc[j] += sum over channels of x[c, j] (kind 0), |x[c, j]| (kind 1) or x[c, j]**2 (kind 2)."""
    n, p = x.shape
    for blk in prange((p + _BLOCK - 1) // _BLOCK):
        start = blk * _BLOCK
        stop = min(start + _BLOCK, p)
        for ch in range(n):
            if kind == 0:
                for j in range(start, stop):
                    acc[j] += _load(x, ch, j, half)
            elif kind == 1:
                for j in range(start, stop):
                    acc[j] += abs(_load(x, ch, j, half))
            else:
                for j in range(start, stop):
                    v = _load(x, ch, j, half)
                    acc[j] += v * v


@njit(cache=True, parallel=True, nogil=True)
def diff(a, half_a, b, half_b, out):
    """out = a - b in float32, elementwise; a and b are [1, P] (see _load), out is [P]."""
    p = out.shape[0]
    for blk in prange((p + _BLOCK - 1) // _BLOCK):
        for j in range(blk * _BLOCK, min(blk * _BLOCK + _BLOCK, p)):
            out[j] = np.float32(_load(a, 0, j, half_a)) - np.float32(_load(b, 0, j, half_b))


@njit(cache=True, parallel=True, nogil=True)
def tile(images, cols, scale, out):
    """Lay images [N, H, W, C] out row by row, ``scale``-times enlarged, 1-pixel black gaps.

    One prange iteration builds the output row of one source row of one tile row (whole-row
    slices are memmoves), then copies it to the ``scale - 1`` rows below.
    """
    n, h, w, ch = images.shape
    th = h * scale
    tw = w * scale
    out_h, out_w, _ = out.shape
    rows = (out_h + 1) // (th + 1)
    src_rows = images.reshape(n, h, w * ch)
    dst_rows = out.reshape(out_h, out_w * ch)
    for q in prange(rows * h):
        ty = q // h
        sy = q - ty * h
        r0 = ty * (th + 1) + sy * scale
        dst = dst_rows[r0]
        for tx in range(cols):
            k = ty * cols + tx
            x0 = tx * (tw + 1) * ch
            if k >= n:
                dst[x0 : x0 + tw * ch] = 0
            elif scale == 1:
                dst[x0 : x0 + tw * ch] = src_rows[k, sy]
            else:
                src = src_rows[k, sy]
                for sx in range(w):
                    for rep in range(scale):
                        base = x0 + (sx * scale + rep) * ch
                        dst[base : base + ch] = src[sx * ch : sx * ch + ch]
            if tx < cols - 1:
                dst[x0 + tw * ch : x0 + (tw + 1) * ch] = 0
        for rep in range(1, scale):
            dst_rows[r0 + rep] = dst
    for ty in prange(rows - 1):
        dst_rows[ty * (th + 1) + th] = 0


@njit(cache=True, nogil=True)
def token_rows(rows, half, tokens, m, first):
    """m[(first + j) % len(m)] += the float32 sum of ``rows[j, tokens]``, in order of j.

    ``rows`` are consecutive rows of one attention chunk ``[head, query, token]`` seen as
    ``[head * query, token]`` (uint16 float16 bits with ``half``, or floats with ``half=None``),
    the first being row ``first``; ``m`` has one float32 per query. Fed the chunk's rows in
    order, ``m / heads`` is numpy's ``probs[:, :, tokens].astype(np.float32).sum(axis=-1).mean(axis=0)``
    operation for operation for fewer than 8 tokens (numpy sums 8 or more pairwise, in another
    order): each sum starts at 0 and adds in order, heads one after another. Serial: it waits on
    memory, not on arithmetic.
    """
    queries = m.shape[0]
    k = tokens.shape[0]
    q = first % queries
    for j in range(rows.shape[0]):
        s = np.float32(0.0)
        for u in range(k):
            if half is None:
                s += np.float32(rows[j, tokens[u]])
            else:
                s += half[rows[j, tokens[u]]]
        m[q] += s
        q += 1
        if q == queries:
            q = 0


@njit(cache=True, nogil=True)
def turbo_overlay(heat, image, poly, keep, alpha, out):
    """out = image blended with Turbo's colours of ``heat`` ([P] float32, no NaN; image and out [P, 3] uint8).

    heatmap.overlay's two numpy steps in one pass: the colour is Turbo's polynomial ``poly``
    ([3, 6], by Horner's rule in float64) of the value clipped to [0, 1], clipped, times 255,
    rounded half to even; the blend ``keep * image + alpha * colour`` is float32 (``keep`` =
    float32(1 - alpha)), rounded half to even and clipped to 0..255.
    """
    for j in range(heat.shape[0]):
        v = heat[j]
        v = np.float32(0.0) if v < 0.0 else v
        v = np.float32(1.0) if v > 1.0 else v
        x = np.float64(v)
        for c in range(3):
            acc = poly[c, 5]
            for d in range(4, -1, -1):
                acc *= x
                acc += poly[c, d]
            acc = min(max(acc, 0.0), 1.0)
            colour = np.float32(np.rint(acc * 255.0))
            o = np.rint(keep * np.float32(image[j, c]) + alpha * colour)
            o = np.float32(0.0) if o < 0.0 else o
            o = np.float32(255.0) if o > 255.0 else o
            out[j, c] = np.uint8(o)

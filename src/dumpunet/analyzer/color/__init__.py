"""The colour engine: float maps in, pixels out, with no knowledge of stores or files.

- :mod:`.colorize`: :class:`ColorSpec` (method, transform, expressions, auto scope) and
  :func:`colorize`, the entry point;
- :mod:`.expressions`: the safe expression language of Custom colours (parsed, never eval'ed);
- :mod:`.intervals`: interval arithmetic that proves lookup-table cells exact;
- :mod:`.hls`: HSL as the original converted it (colorsys on arrays, unclipped) and its bounds;
- :mod:`.lut`: lookup tables for Custom expressions;
- :mod:`.kernels`: every numba kernel (colour, channel averages, tiling), each with a numpy
  reference in ``tests/analyzer/reference.py``;
- :mod:`.float16`: how float16 maps reach the kernels (as raw bits through one table).
"""

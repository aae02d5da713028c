"""The analyzer: read a store and draw it, with numpy, numba and Pillow; never torch.

- :mod:`.color`: the colour engine (ColorSpec, expressions, kernels);
- views and commands built on it: :mod:`.render` (channel grids), :mod:`.export` (raw values),
  :mod:`.attention_grids` (heads x tokens grids), :mod:`.heatmap` (word heatmaps, query maps),
  :mod:`.diff` (layered - base), :mod:`.sweep` (contact sheets);
- what they share: :mod:`.selection` (what to read), :mod:`.grid` and :mod:`.reduce` (tiles and
  channel averages), :mod:`.pca`, :mod:`.labels` and :mod:`.chart` (text and charts), :mod:`.png`,
  :mod:`.pool` (threads) and :mod:`.output` (output folders and manifests).
"""

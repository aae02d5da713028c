"""The analyzer: read a store and draw it, with numpy, numba and Pillow; never torch.

- the values every view takes: :mod:`.pick` (:class:`~.pick.Pick`, what to read),
  :mod:`.color.spec` (:class:`~.color.spec.ColorSpec`, how to colour) and :mod:`.style`
  (:class:`~.style.GridStyle`, tile scale, channel average, PCA basis); their fields are the
  command-line options too (:mod:`dumpunet.options`);
- :mod:`.color`: the colour engine (ColorSpec, expressions, kernels);
- views built on it: :mod:`.render` (channel grids, in memory or as files; planned by
  :mod:`.render_plan`), :mod:`.export` (raw values), :mod:`.attention_grids` (heads x tokens
  grids), :mod:`.heatmap` (word heatmaps, query maps), :mod:`.diff` (layered - base),
  :mod:`.sweep` (contact sheets), :mod:`.finals` (a run's final images as files);
- what they share: :mod:`.selection` (a pick checked against a store), :mod:`.scope` (which maps
  share one Auto range), :mod:`.output` (the one output-folder lifecycle: atomic files and
  ``manifest.json``), :mod:`.grid` and :mod:`.reduce` (tiles and channel averages), :mod:`.pca`,
  :mod:`.labels`, :mod:`.tokens` and :mod:`.chart` (text and charts), :mod:`.png` and
  :mod:`.pool` (threads, progress).
"""

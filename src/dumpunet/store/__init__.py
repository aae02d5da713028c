"""The store: the whole on-disk contract between the recorder and the analyzer.

- :mod:`.schema`: array kinds, paths, dims, dtypes, chunks and typed attributes (the contract);
- :mod:`.reader`: :class:`Store`, the read-only object behind ``dumpunet.open``, reading through
  :mod:`.localfiles` (regular files below the root only) and :mod:`.chunks` (each chunk checked
  before it is read), with :mod:`.calls` for each run's call table; :mod:`.readahead` requests
  the chunks of a long loop's next items from a remote store while one is worked on;
- :mod:`.writer`: :class:`StoreWriter`, the recorder's background writer, and
  :mod:`.call_arrays`, the per-call arrays it writes as files; :mod:`.target`, where a
  recording goes (the ``--out`` checks, the store created whole, the lock of its one writer);
- :mod:`.location`: where a store is (a folder or a URL) and the one opener of both;
  :mod:`.transfer`: ``dumpunet copy`` and the upload of ``record --out URL``;
- :mod:`.validate`: ``dumpunet validate``;
- :mod:`.summary`: ``dumpunet info``.

This package imports neither the recorder nor the analyzer.
"""

from __future__ import annotations

from dumpunet.store.reader import CallTable, Run, Store, open_store

__all__ = ["CallTable", "Run", "Store", "open_store"]

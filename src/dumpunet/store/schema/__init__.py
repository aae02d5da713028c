"""The on-disk contract between the recorder and the analyzer, in two halves.

- :mod:`.arrays`: array kinds, paths, dims, dtypes, chunks and codecs;
  ``create_array``/``open_array``/``open_root``;
- :mod:`.coords`: the coordinate arrays beside per-call arrays (format 1.1);
- :mod:`.attrs`: every JSON attribute as a typed value with ``to_json``/``from_json``
  (:class:`RootAttrs`, :class:`RunAttrs`, :class:`LayerAttrs`, ...), whose field checks live in
  :mod:`.fields`.

No module outside this package spells an array path, an attribute key or an axis position;
``docs/store-format.md`` describes the same layout for people who open stores without dumpunet.
"""

from __future__ import annotations

from dumpunet.store.schema.arrays import *  # noqa: F403
from dumpunet.store.schema.arrays import __all__ as _arrays_all
from dumpunet.store.schema.array_attrs import ArrayAttrs, LayerAttrs
from dumpunet.store.schema.coords import (
    CALL_COORDS,
    COORD_GUIDANCE,
    COORD_STEP,
    COORD_SUBSTEP,
    COORD_TIMESTEP,
    COORDINATES_KEY,
    COORDS,
    coordinates_attr,
    data_group,
    table_key,
)
from dumpunet.store.schema.attrs import (
    GUIDANCE_LABELS,
    HEADER_KEY,
    NAME_PATTERN,
    STORE_KIND,
    BlockInfo,
    Header,
    PairInfo,
    PromptListInfo,
    RootAttrs,
    RunAttrs,
    TokenRow,
    check_name,
)
from dumpunet.store.schema.networks import EMBEDDINGS_KEY, LORAS_KEY, NetworkFile, model_networks

__all__ = [
    *_arrays_all,
    "CALL_COORDS", "COORD_GUIDANCE", "COORD_STEP", "COORD_SUBSTEP", "COORD_TIMESTEP", "COORDINATES_KEY", "COORDS",
    "coordinates_attr", "data_group", "table_key",
    "GUIDANCE_LABELS", "HEADER_KEY", "NAME_PATTERN", "STORE_KIND", "ArrayAttrs", "BlockInfo", "Header",
    "LayerAttrs", "PairInfo", "PromptListInfo", "RootAttrs", "RunAttrs", "TokenRow", "check_name",
    "EMBEDDINGS_KEY", "LORAS_KEY", "NetworkFile", "model_networks",
]

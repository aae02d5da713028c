"""Coordinate arrays (format 1.1): labels that let plain xarray select by name.

Every group that holds per-call arrays (``runs/{run}/blocks/{block}``,
``runs/{run}/attention/{layer}``) also holds, beside them::

    guidance   string  [guidance]   the guidance labels ("uncond", "cond")
    step       int32   [call]       sampler step of each call (0: a call not labelled yet)
    substep    int32   [call]       U-Net call within its step
    timestep   float32 [call]       scheduler timestep (NaN: a call not labelled yet)

and every per-call array names ``step substep timestep`` in its CF ``coordinates`` attribute, so
``xarray.open_zarr(store, group="runs/main/blocks/OUT11")`` shows them as coordinates and
``.sel(guidance="cond")`` works (``step`` is a coordinate along ``call``, not an index: select
with ``.set_xindex("step").sel(step=10)``, or use :meth:`dumpunet.Store.to_xarray`, whose
dimension is ``step``). The values copy the run's call tables, which stay the reference: the
writer grows and trims the coordinates with the group's arrays (the same length always) and labels
calls in batches, as the arrays grow and when the run is trimmed, so a killed recording may leave
its last calls at the fill values (``step`` 0), never at a wrong label. Stores of format 1.0 have no
coordinate arrays; dumpunet reads its coordinates from the call tables in either case.

Examples
--------
>>> COORD_STEP.path(group=data_group("runs/main/blocks/OUT11/output"))
'runs/main/blocks/OUT11/step'
>>> coordinates_attr()
{'coordinates': 'step substep timestep'}
"""

from __future__ import annotations

from typing import Any

from dumpunet.store.schema.arrays import ArrayKind

__all__ = ["CALL_COORDS", "COORD_GUIDANCE", "COORD_STEP", "COORD_SUBSTEP", "COORD_TIMESTEP", "COORDS",
           "COORDINATES_KEY", "coordinates_attr", "data_group", "table_key"]

COORD_GUIDANCE = ArrayKind("guidance", "{group}/guidance", ("guidance",), "str",
                           "labels of the guidance axis", "whole", fill_value="")
COORD_STEP = ArrayKind("step", "{group}/step", ("call",), "int32",
                       "sampler step of each call (copy of the run's call_step; 0: not labelled yet)", "calls")
COORD_SUBSTEP = ArrayKind("substep", "{group}/substep", ("call",), "int32",
                          "U-Net call within its sampler step (copy of the run's call_substep)", "calls")
COORD_TIMESTEP = ArrayKind("timestep", "{group}/timestep", ("call",), "float32",
                           "scheduler timestep (copy of the run's call_timestep; NaN: not labelled yet)", "calls",
                           fill_value=float("nan"))
CALL_COORDS = (COORD_STEP, COORD_SUBSTEP, COORD_TIMESTEP)
"""Coordinates along ``call``: the writer fills them from the call tables, call by call."""
COORDS = {kind.key: kind for kind in (COORD_GUIDANCE, *CALL_COORDS)}

COORDINATES_KEY = "coordinates"
"""The CF attribute of a per-call array naming its non-index coordinates (xarray decodes it)."""

_TABLE_KEYS = {"step": "call_step", "substep": "call_substep", "timestep": "call_timestep"}


def table_key(kind: ArrayKind) -> str:
    """The call table a call coordinate copies (``step`` -> ``call_step``)."""
    return _TABLE_KEYS[kind.key]


def data_group(array_path: str) -> str:
    """The group of a per-call array, where its coordinates live."""
    return array_path.rsplit("/", 1)[0]


def coordinates_attr() -> dict[str, Any]:
    """The attribute a per-call array carries so xarray attaches the call coordinates."""
    return {COORDINATES_KEY: " ".join(kind.key for kind in CALL_COORDS)}

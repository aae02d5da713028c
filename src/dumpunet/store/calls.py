"""A run's call table as the reader sees it: which sampler step each U-Net call belongs to, and which are done."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from dumpunet.errors import IncompleteStepError, SelectionError, StoreError
from dumpunet.specs import format_ints
from dumpunet.store import schema
from dumpunet.store.chunks import ChunkFiles, call_table_problem, layout_problem

__all__ = ["CallTable", "read_call_table"]


@dataclass(frozen=True)
class CallTable:
    """Sampler step, sub-step, timestep and completion of every recorded U-Net call of a run."""

    step: np.ndarray
    substep: np.ndarray
    timestep: np.ndarray
    done: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.done)

    @property
    def complete_steps(self) -> list[int]:
        """Steps whose every recorded call is completely written."""
        bad = set(self.step[~self.done].tolist())
        return sorted(set(self.step[self.done].tolist()) - bad)

    @property
    def incomplete_steps(self) -> list[int]:
        return sorted(set(self.step[~self.done].tolist()))

    def index(self, step: int, substep: int = 0) -> int:
        """Return the call index of (step, substep), or raise a readable error."""
        hits = np.flatnonzero((self.step == step) & (self.substep == substep))
        if len(hits) == 0:
            if step in self.step:
                subs = sorted(set(self.substep[self.step == step].tolist()))
                raise SelectionError(f"step {step} has no U-Net call {substep} (recorded calls: {format_ints(subs)})")
            raise SelectionError(f"step {step} was not recorded (recorded steps: {format_ints(self.complete_steps) or 'none'})")
        k = int(hits[0])
        if not self.done[k]:
            raise IncompleteStepError(
                f"step {step} was not completely written (the recording was interrupted); "
                f"complete steps: {format_ints(self.complete_steps) or 'none'}"
            )
        return k


def read_call_table(root: zarr.Group, files: ChunkFiles, run: str, where: str) -> CallTable:
    """Read a run's four call tables after checking them against their chunk files (a run without calls: empty).

    A table whose shape claims more calls than its files hold, or whose chunk is damaged, a link
    or a special file, raises StoreError naming it (``where`` is the store, for the message).
    """
    arrays = {}
    for kind in schema.CALL_ARRAYS:
        try:
            arr = schema.open_array(root, kind, run=run)
        except KeyError:
            arrays[kind.key] = np.zeros(0, dtype=kind.dtype)
            continue
        # plain zarr leaves out an all-zero chunk; of the call tables only call_substep is all zeros by nature
        strict = kind is not schema.CALL_SUBSTEP
        problem = layout_problem(arr.path, arr, kind) or call_table_problem(files, arr.path, arr, strict=strict)
        if problem is not None:
            raise StoreError(f"{where}: {problem}")
        arrays[kind.key] = arr[...]
    n = min(len(a) for a in arrays.values())
    return CallTable(
        step=arrays["call_step"][:n].astype(np.int64),
        substep=arrays["call_substep"][:n].astype(np.int64),
        timestep=arrays["call_timestep"][:n],
        done=arrays["call_done"][:n] == 1,
    )

"""Two runs whose attention is compared: ``run - base``, of a pair or of two stores.

``attention`` and ``heatmap`` draw the difference of two runs as ``diff`` draws block outputs:
the two runs of a pair (``record --pair``, ``sweep``: ``layered - base``), or a run of each of
two stores (``STORE - BASE``: two recordings of one model at one size). :func:`compare_runs`
checks that the runs can be compared, with the messages of :mod:`.selection` (the same U-Net
layout, the same guidance halves), and :meth:`RunPair.check` that both hold the picked
layers, with the same shapes, at the picked steps. Maps are subtracted in float32
(:func:`~dumpunet.analyzer.reduce.difference`) before any head average; tokens are compared
by position (a column shows ``5:girl-car`` where the prompts differ there).

Examples
--------
>>> runs = compare_runs(dumpunet.open("pair.zarr"), Pick(), pair="IN04")  # doctest: +SKIP
>>> runs.label  # doctest: +SKIP
'pair: run IN04 - run base'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.selection import (
    base_call,
    check_halves,
    check_layouts,
    matching_run,
    store_label,
)
from dumpunet.errors import OptionError, SelectionError
from dumpunet.specs import format_ints
from dumpunet.store import Run, Store, open_store

__all__ = ["RunPair", "compare_runs"]


@dataclass(frozen=True)
class RunPair:
    """Two runs whose maps are subtracted: ``run - base`` (a pair's layered and base runs, or two stores' runs)."""

    store: Store
    run: Run
    base_store: Store
    base: Run
    label: str
    """What the difference shows, for titles: ``a.zarr:main - b.zarr:main``, or the pair's runs."""
    desc: str
    base_desc: str
    pair: str | None = None

    @property
    def runs(self) -> str:
        """Both runs, for messages: ``runs 'base' and 'layered' of pair 'layered'``."""
        return f"runs {self.base_desc} and {self.desc}" + (f" of pair {self.pair!r}" if self.pair else "")

    def check(self, layers: Sequence[str], steps: Sequence[int], feature: str = "qk") -> None:
        """Refuse layers the base run lacks or holds in another shape, and steps it has not completely written."""
        for layer in layers:
            arr = self.run.attention_array(layer, feature)
            try:
                other = self.base.attention_array(layer, feature)
            except SelectionError:
                raise SelectionError(
                    f"layer {layer} has recorded attention in run {self.desc} but not in base run {self.base_desc} "
                    f"(recorded there: {', '.join(self.base.attention_layers) or 'none'})") from None
            if other.shape[1:] != arr.shape[1:]:
                def dims(a) -> str:
                    return "x".join(str(n) for n in a.shape[1:])

                raise SelectionError(f"{self.runs} differ: layer {layer} is {dims(other)} in {self.base_desc} but "
                                     f"{dims(arr)} in {self.desc} ([image, guidance, head, query, key])")
            mine, theirs = (r.layer_info(layer, feature) for r in (self.run, self.base))
            if (mine.kept_tokens, mine.heads) != (theirs.kept_tokens, theirs.heads):
                def cut(info) -> str:
                    kept = "every token" if info.kept_tokens is None else f"tokens {format_ints(info.kept_tokens)}"
                    return f"{kept}, heads {info.heads}"

                raise SelectionError(f"{self.runs} differ: layer {layer} holds {cut(theirs)} in {self.base_desc} but "
                                     f"{cut(mine)} in {self.desc} (--attention-tokens, --attention-heads)")
        for s in steps:
            base_call(self.base, s, self.base_desc)

    def describe(self) -> dict[str, str | None]:
        """The manifest fields of a difference's files."""
        return {"base_store": str(self.base_store.path.resolve()), "base_run": self.base.name, "pair": self.pair,
                "difference": self.label}


def compare_runs(
    store: Store,
    pick: Pick,
    *,
    pair: str | None = None,
    base: Store | str | os.PathLike[str] | None = None,
    base_run: str | None = None,
) -> RunPair:
    """The two runs of a difference: a pair's (``pair``: its label) or ``pick.run`` of ``store`` against ``base``.

    ``base_run``: the run of ``base`` (default: its run of the same name, or its default run).
    Stores of another U-Net layout, or runs with other guidance halves, are refused with the
    messages ``diff`` gives.
    """
    if pair is not None and base is not None:
        raise OptionError("pair= compares the two runs of a pair in one store, base= two stores: give one")
    if base is None:
        if base_run is not None:
            raise OptionError("base_run= names a run of the base store: give base= too")
        if pair is None:
            raise OptionError("a difference needs pair= (a pair of this store) or base= (another store)")
        if pick.run is not None:
            raise OptionError("a pair's difference reads its two runs: choose the pair with pair=..., not run=...")
        base_r, layered = store.pair(pair)
        label = next(p.label for p in store.pairs if (p.base, p.layered) == (base_r.name, layered.name))
        compared = RunPair(store, layered, store, base_r, f"{store_label(store)}: run {layered.name} - run {base_r.name}",
                           repr(layered.name), repr(base_r.name), label)
    else:
        base_st = base if isinstance(base, Store) else open_store(base)
        check_layouts(store, base_st)
        r = store.run(pick.run)
        other = base_st.run(base_run) if base_run is not None else matching_run(base_st, r.name)
        name, base_name = store.path.name, base_st.path.name
        compared = RunPair(store, r, base_st, other, f"{name}:{r.name} - {base_name}:{other.name}",
                           f"{r.name!r} of {name}", f"{other.name!r} of {base_name}")
    check_halves(compared.base, compared.run, compared.runs, compared.base_desc, compared.desc)
    return compared

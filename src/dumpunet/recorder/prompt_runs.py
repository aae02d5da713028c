"""``dumpunet record --prompts FILE`` (and ``sweep --prompts``): every prompt of a file as its own run(s), the
pipeline loaded once.

:func:`plan` reads the file, makes every row's request and compares them with what ``--out``
(or ``--out-dir``) already holds, before a model loads: a bad row, or a store recorded from
another file or with other options, stops it with nothing written (a file grown by rows appended
at its end is not another file: its new prompts are added). :func:`load` loads the
pipeline once and checks every row's per-block prompt against its blocks; :func:`execute`
records the prompts not recorded yet, under one progress bar.

Runs: in one store, prompt ``i`` is run ``p0000`` (``--pair``: ``p0000-base`` and ``p0000``,
paired as ``p0000``; ``sweep``: ``p0000-base`` and ``p0000-IN00``, ...); with ``--out-dir`` it is
the store ``DIR/p0000.zarr``, whose runs are those of a plain ``record`` or ``sweep`` (``main``;
``base`` and ``layered``; ``base`` and one a block). A prompt whose runs are all complete
is skipped by a rerun; an interrupted one is removed and recorded again.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dumpunet.errors import DumpUnetError, RecordError, StoreError
from dumpunet.prompt_lists import PromptList, PromptListOptions, PromptRow, option_differences, plural, read_prompt_list, run_name
from dumpunet.recorder import job as recording
from dumpunet.recorder.buffers import HostBuffers
from dumpunet.recorder.identity import unet_fingerprint
from dumpunet.recorder.recorder import open_writer
from dumpunet.recorder.request import RecordRequest, RunPrompts, check_init_image, draw_seed, run_prompts
from dumpunet.store import open_store, schema
from dumpunet.store.location import StoreUrl, list_sizes, open_zarr_store
from dumpunet.store.target import StoreLock, check_target
from dumpunet.store.transfer import Uploader, check_upload_target, drop_other_runs, fetch_documents, upload_interval

__all__ = ["Progress", "PromptPlan", "PromptTarget", "execute", "load", "plan", "shared_options"]

PER_PROMPT = ("out", "prompt", "negative_prompt", "seed", "steps")
"""Request fields that each prompt has its own of (``steps`` is the old spelling of sampling_steps)."""
NOT_COMPARED = ("overwrite", "quiet", "device", "max_bytes", "extra")
"""Request fields that do not change what is recorded: a rerun may change them."""
LATER_DEFAULTS = {"attention_heads": "all", "attention_tokens": ""}
"""Request fields added after stores kept their options, left out of them at these defaults, so that a
store recorded before them still compares equal to a rerun that does not use them."""


def shared_options(req: RecordRequest) -> dict[str, Any]:
    """The options every prompt of a list is recorded with, as JSON (the store's ``prompt_list.options``)."""
    out = {}
    for f in fields(req):
        value = getattr(req, f.name)
        if f.name in PER_PROMPT or f.name in NOT_COMPARED or LATER_DEFAULTS.get(f.name, object()) == value:
            continue
        out[f.name] = [str(v) for v in value] if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
    return out


@dataclass(frozen=True)
class PromptTarget:
    """One prompt of the list: its row, its request (``out``: the store it goes into) and its runs' names."""

    index: int
    row: PromptRow
    req: RecordRequest
    runs: tuple[str, ...]

    @property
    def name(self) -> str:
        """``p0000``: its run's name in one store, its store's name with ``--out-dir``."""
        return run_name(self.index)

    def run_name(self, name: str, *, one_store: bool) -> str:
        """A run of this prompt as it is named in the output: as ``record`` (``sweep``) names it alone, or in one store
        ``p0000`` (``p0000-base`` and ``p0000`` for ``--pair``; ``p0000-base`` and ``p0000-IN00``, ... for a sweep).

        >>> t = PromptTarget(3, PromptRow(4, "a cat"), None, ())  # type: ignore[arg-type]
        >>> [t.run_name(n, one_store=True) for n in ("main", "base", "layered", "IN04")], t.run_name("IN04", one_store=False)
        (['p0003', 'p0003-base', 'p0003', 'p0003-IN04'], 'IN04')
        """
        if not one_store:
            return name
        if name == "base":
            return f"{self.name}-base"
        return self.name if name in ("main", "layered") else f"{self.name}-{name}"

    def rename(self, run: RunPrompts, *, one_store: bool) -> RunPrompts:
        return replace(run, name=self.run_name(run.name, one_store=one_store))

    def rename_pair(self, pair: schema.PairInfo, *, one_store: bool) -> schema.PairInfo:
        """A pair of this prompt's runs as the output names it; in one store its label is its layered run's name."""
        if not one_store:
            return pair
        layered = self.run_name(pair.layered, one_store=True)
        return schema.PairInfo(self.run_name(pair.base, one_store=True), layered, layered)


@dataclass(frozen=True)
class PromptPlan:
    """What ``record --prompts`` will do: every prompt's target, and which of them are recorded already."""

    plist: PromptList
    info: schema.PromptListInfo
    targets: tuple[PromptTarget, ...]
    done: frozenset[int]  # prompts whose runs are all complete: skipped
    out: Path | None  # one store
    out_dir: Path | None  # one store a prompt
    resume: bool  # one store that exists: add to it (its complete prompts stay)
    unet_fingerprint: str | None  # of the model the existing stores were recorded with
    grown_from: int | None = None  # the output holds a list of this many prompts, of which this list is a longer one
    remote: StoreUrl | None = None  # --out URL: ``out`` is the local scratch store whose completed calls are uploaded
    overwrite: bool = False

    @property
    def where(self) -> Path | StoreUrl:
        """Where the runs go, as the command line named it: --out (a folder or a URL) or --out-dir."""
        where = self.remote or self.out or self.out_dir
        assert where is not None
        return where

    @property
    def todo(self) -> list[PromptTarget]:
        return [t for t in self.targets if t.index not in self.done]

    @property
    def keep_runs(self) -> tuple[str, ...]:
        return tuple(run for t in self.targets if t.index in self.done for run in t.runs)

    def skipped_line(self) -> str | None:
        if not self.done:
            return None
        return f"skipping {len(self.done)} of {plural(len(self.targets), 'prompt')} already recorded in {self.where}"

    def grown_line(self) -> str | None:
        """Say that the file adds prompts to the list the output was recorded from."""
        if self.grown_from is None:
            return None
        where = self.where
        added = len(self.targets) - self.grown_from
        first = f"runs {run_name(self.grown_from)}" if self.out is not None else f"stores {run_name(self.grown_from)}.zarr"
        return f"{self.plist.source} adds {plural(added, 'prompt')} to the {self.grown_from} recorded in {where} ({first} on)"


def _runs_of(index: int, pair: bool, *, one_store: bool) -> tuple[str, ...]:
    """The runs of a prompt of ``record --prompts`` (a sweep's depend on the model's blocks: see :func:`_swept_runs`)."""
    if not one_store:
        return ("base", "layered") if pair else ("main",)
    name = run_name(index)
    return (f"{name}-base", name) if pair else (name,)


def plan(options: Mapping[str, Any], lists: PromptListOptions, *, remote: StoreUrl | None = None) -> PromptPlan:
    """Read the prompt file, make each row's request, and compare them with what the output already holds.

    ``options`` are :class:`RecordRequest`'s fields as the command line gave them (``prompt``
    empty: the rows give it). With ``remote`` (``--out URL``), ``options["out"]`` is the local
    scratch store the runs are recorded into, and the store compared with is the one at the URL.
    Raises a :class:`~dumpunet.errors.PromptListError` naming the file and line of a bad row, and
    a :class:`~dumpunet.errors.RecordError` naming what differs when the output was recorded from
    another list or with other options; a list grown by rows appended at its end is no other list.
    """
    assert lists.prompts is not None
    plist = read_prompt_list(lists.prompts)
    one_store = lists.out_dir is None
    out = Path(options["out"]) if one_store else None
    out_dir = lists.out_dir
    overwrite = bool(options.get("overwrite"))
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise RecordError(f"--out-dir {out_dir} is a file; give a folder")
        if not out_dir.resolve().parent.is_dir():
            raise RecordError(f"cannot create --out-dir {out_dir}: folder {out_dir.parent} does not exist")
    existing = _existing(remote or out, out_dir, len(plist.rows), overwrite)
    recorded = next((info.prompt_list for _, info, _ in existing.values()), None)
    seed = int(options.get("seed", -1))
    if seed < 0:  # a random seed is drawn once for the list, and a rerun takes it from the store
        seed = recorded.seed if recorded is not None else draw_seed()
    negative = str(options.get("negative_prompt", ""))
    targets = []
    for i, ((prompt, neg, row_seed), row) in enumerate(zip(plist.resolved(negative, seed), plist.rows)):
        target = out if out is not None else out_dir / f"{run_name(i)}.zarr"  # type: ignore[operator]
        try:
            req = RecordRequest(**{**options, "out": target, "prompt": prompt, "negative_prompt": neg, "seed": row_seed})
        except DumpUnetError as exc:
            raise plist.error(row, exc) from None
        runs = () if req.sweep_insert is not None else _runs_of(i, req.pair, one_store=one_store)
        targets.append(PromptTarget(i, row, req, runs))
    check_init_image(targets[0].req)
    source = str(lists.prompts)
    info = schema.PromptListInfo(source=source, count=len(targets), sha256=plist.sha256(negative, seed), seed=seed,
                                 options=shared_options(targets[0].req))
    done = set()
    counts = []  # of the lists the existing stores were recorded from (each one this list or its head)
    for key, (index, root, complete) in existing.items():
        _compare(key, root, info, plist, negative, seed, index)
        counts.append(root.prompt_list.count)  # type: ignore[union-attr]
        for i in complete:
            if i < len(targets) and targets[i].req.sweep_insert is not None:
                targets[i] = replace(targets[i], runs=_swept_runs(targets[i], root.pairs, one_store=one_store))
        done |= {i for i in complete if i < len(targets) and targets[i].runs
                 and all(r in complete[i] for r in targets[i].runs)}
    fingerprint = next((str(root.model.get("unet_fingerprint")) for _, root, _ in existing.values()
                        if root.model.get("unet_fingerprint")), None)
    for t in targets:
        if t.index not in done:
            if out_dir is not None and t.req.out.exists():
                check_target(t.req.out, overwrite=True)  # a store (an interrupted one): recorded again
            StoreLock(t.req.out).check_free()
    if out is not None and not existing:
        check_target(out, overwrite=overwrite)
        if remote is not None:
            check_upload_target(remote, overwrite=overwrite, delete=False)  # replaced only when recording starts
    return PromptPlan(plist, info, tuple(targets), frozenset(done), out, out_dir, resume=out is not None and bool(existing),
                      unet_fingerprint=fingerprint,
                      grown_from=max(counts) if counts and max(counts) < info.count else None, remote=remote,
                      overwrite=overwrite)


def _swept_runs(t: PromptTarget, pairs: tuple[schema.PairInfo, ...], *, one_store: bool) -> tuple[str, ...]:
    """A sweep prompt's runs as the store it was recorded into lists them (its pairs are written before its runs):
    its base run and every block run paired with it; none if the store lists no pair of it yet."""
    base = t.run_name("base", one_store=one_store)
    layered = tuple(p.layered for p in pairs if p.base == base)
    return (base, *layered) if layered else ()


def _existing(out: Path | StoreUrl | None, out_dir: Path | None, count: int, overwrite: bool
              ) -> dict[Path | StoreUrl, tuple[int | None, schema.RootAttrs, dict[int, set[str]]]]:
    """The stores already there (none with ``--overwrite``): their root attributes and each prompt's complete runs."""
    if overwrite:
        return {}
    paths: list[tuple[int | None, Path | StoreUrl]]
    if isinstance(out, StoreUrl):
        paths = [(None, out)] if _holds_store(out) else []
    elif out is not None:
        paths = [(None, out)] if out.exists() else []
    else:
        assert out_dir is not None
        paths = [(i, p) for i in range(count) if (p := out_dir / f"{run_name(i)}.zarr").exists()]
    found = {}
    for index, path in paths:
        if isinstance(path, Path) and out is not None:
            check_target(path, overwrite=True)  # a symbolic link, the current folder, ... stay refused
        try:
            store = open_store(path)
        except StoreError as exc:
            raise RecordError(f"{path} exists and is not a readable dumpunet store ({exc}); choose another "
                              f"{'--out' if out is not None else '--out-dir'} or pass --overwrite") from None
        if store.info.prompt_list is None:
            raise RecordError(f"{path} exists and was not recorded with --prompts; choose another "
                              f"{'--out' if out is not None else '--out-dir'} or pass --overwrite")
        complete: dict[int, set[str]] = {}
        for name in store.run_names:
            try:
                ok = store.run(name).complete
            except StoreError:
                ok = False
            if not ok:
                continue
            if index is not None:
                complete.setdefault(index, set()).add(name)
            elif name.startswith("p") and name[1:].split("-", 1)[0].isdigit():
                complete.setdefault(int(name[1:].split("-", 1)[0]), set()).add(name)
        found[path] = (index, store.info, complete)
    return found


def _holds_store(remote: StoreUrl) -> bool:
    """Whether the URL holds a store (False: nothing); anything else there is refused, as by ``record --out URL``."""
    there = list_sizes(open_zarr_store(remote), remote)
    if there and "zarr.json" not in there:
        check_upload_target(remote, overwrite=False)  # raises: it names what is there
    return bool(there)


def _compare(path: Path | StoreUrl, root: schema.RootAttrs, info: schema.PromptListInfo, plist: PromptList, negative: str,
             seed: int, index: int | None) -> None:
    """Refuse to add to a store recorded from another prompt list, or with other options, naming what differs.

    A store recorded from a shorter version of this list (the same rows, with rows appended since)
    is accepted: the new prompts are added to it.
    """
    recorded = root.prompt_list
    assert recorded is not None
    again = "record into another --out (or --out-dir), or pass --overwrite to start over"
    differences = option_differences(recorded.options, info.options)
    if recorded.seed != info.seed:
        differences.insert(0, f"--seed {info.seed} (recorded: {recorded.seed})")
    if differences:
        raise RecordError(f"{path} was recorded with other options: {'; '.join(differences)}; {again}")
    if index is not None and recorded.index != index:
        raise RecordError(f"{path} holds prompt {recorded.index} of its list, not prompt {index}; {again}")
    if recorded.sha256 == info.sha256:
        return
    if recorded.count < info.count and plist.head(recorded.count).sha256(negative, seed) == recorded.sha256:
        return  # grown by appended rows
    rows = plist.resolved(negative, seed)
    first = _first_difference(path, plist, rows, index)
    if recorded.count > info.count and not first:
        raise RecordError(f"{path} was recorded from a prompt list of {recorded.count} prompts ({recorded.source}), "
                          f"{plist.source} holds {info.count}; {again}")
    grows = "; a recorded list grows only by rows appended at its end" if recorded.count < info.count else ""
    raise RecordError(f"{path} was recorded from another prompt list ({recorded.source}): {plist.source} differs "
                      f"in its prompts, negative prompts or seeds{first}{grows}; {again}")


def _first_difference(path: Path | StoreUrl, plist: PromptList, rows: list[tuple[str, str, int]], index: int | None) -> str:
    """Name the first recorded prompt that differs from its row, where the store says what it was."""
    try:
        store = open_store(path)
    except StoreError:
        return ""
    for i, (row, (prompt, negative, seed)) in enumerate(zip(plist.rows, rows)):
        if index is not None and i != index:
            continue
        name = "main" if index is not None else run_name(i)
        if index is not None and name not in store.run_names:
            name = "layered"
        if name not in store.run_names:
            continue
        a = store.run(name).info
        for label, want, got in (("prompt", prompt, a.prompt), ("negative prompt", negative, a.negative_prompt),
                                 ("seed", seed, a.seed)):
            if got is not None and want != got:
                return f" (line {row.line}: {label} {want!r}, run {name} has {got!r})"
    return ""


def load(p: PromptPlan) -> recording.Job:
    """Load the pipeline once (for the first prompt); check every row's per-block prompt against its blocks."""
    job = recording.load(p.targets[0].req)
    if p.unet_fingerprint is not None and unet_fingerprint(job.pipe.unet) != p.unet_fingerprint:
        raise RecordError(f"{p.where} was recorded with another model: the U-Net fingerprint differs (the weights "
                          "changed); record into another --out (or --out-dir), or pass --overwrite to start over")
    names, aliases = job.names
    for t in p.targets:
        try:
            run_prompts(t.req, names, aliases, job.no_xattn)
        except DumpUnetError as exc:
            raise p.plist.error(t.row, exc) from None
    return job


def estimate(job: recording.Job, p: PromptPlan) -> recording.Estimate:
    """The size of the prompts still to record (every prompt's run is sized like the first's)."""
    est = recording.estimate(job)
    per_prompt = est.runs
    return replace(est, runs=per_prompt * len(p.todo))


class Progress:
    """One bar over prompts x steps: each run reports its step, the bar adds the runs before it."""

    def __init__(self, prompts: int, runs_per_prompt: int, steps: int, *, enabled: bool) -> None:
        self.steps = steps
        self.offset = 0
        self.bar = tqdm(total=prompts * runs_per_prompt * steps, desc=f"record {plural(prompts, 'prompt')}", unit="step",
                        file=sys.stderr, disable=not enabled)

    def on_step(self, step: int) -> None:
        self.bar.update(self.offset + step - self.bar.n)

    def next_run(self) -> None:
        self.offset += self.steps
        self.bar.update(self.offset - self.bar.n)

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class Summary:
    """What :func:`execute` recorded."""

    seed: int  # the seed of rows without their own
    recorded: tuple[str, ...]  # prompts' run (or store) names recorded now
    skipped: tuple[str, ...]  # ... already recorded
    calls: int
    steps: int


def execute(job: recording.Job, p: PromptPlan, *, quiet: bool = False) -> Summary:
    """Record the prompts not recorded yet: into one store (resumed where it exists), or one store each.

    With ``--out URL`` the runs are recorded into the local scratch store ``p.out`` and uploaded
    while they are recorded (:class:`~dumpunet.store.transfer.Uploader`); resuming, the scratch
    store starts from the URL's root document, and the runs not kept are deleted there first.
    """
    one_store = p.out is not None
    todo = p.todo
    base_kwargs = recording.generation_kwargs(job)
    names, aliases = job.names
    planned = {t.index: run_prompts(t.req.without_networks(), names, aliases, job.no_xattn) for t in p.targets}
    progress = Progress(len(todo), len(planned[todo[0].index][0]), job.req.executed_steps, enabled=not quiet)
    calls, recorded = 0, []
    writer = uploader = None
    buffers = HostBuffers(0)  # every prompt's runs reuse the host buffers of the first
    try:
        if p.out_dir is not None:
            p.out_dir.mkdir(exist_ok=True)
        if p.remote is not None and p.resume:
            fetch_documents(p.remote, p.out)  # type: ignore[arg-type]  the kept runs' arrays stay remote
        elif p.remote is not None:
            check_upload_target(p.remote, overwrite=p.overwrite)  # --overwrite: the store there goes now
        if one_store:
            pairs = [t.rename_pair(pair, one_store=True) for t in p.targets for pair in planned[t.index][1]]
            writer = open_writer(p.out, job.pipe, job.model_info, pairs=pairs, prompt_list=p.info,  # type: ignore[arg-type]
                                 overwrite=job.req.overwrite, keep_runs=p.keep_runs if p.resume else None)
        if p.remote is not None:
            if p.resume:
                drop_other_runs(p.remote, p.out)  # type: ignore[arg-type]  an interrupted prompt's run goes there too
            uploader = Uploader(p.out, p.remote, interval=upload_interval()).start()  # type: ignore[arg-type]
        for t in todo:
            row_job = recording.reseeded(job, t.req.without_networks())
            runs, pairs = planned[t.index]
            own = writer
            if own is None:
                own = open_writer(t.req.out, job.pipe, job.model_info, pairs=pairs, overwrite=t.req.out.exists(),
                                  prompt_list=replace(p.info, index=t.index))
            try:
                for run in runs:
                    calls += recording.record_run(row_job, own, t.rename(run, one_store=one_store), base_kwargs,
                                                  on_step=progress.on_step, prompt_line=t.row.line, buffers=buffers)
                    progress.next_run()
            finally:
                if own is not writer:
                    own.close()
            recorded.append(t.name)
    finally:
        progress.close()
        try:
            if writer is not None:
                writer.close()
        finally:
            if uploader is not None:
                uploader.close()  # a last round: every completed call reaches the URL, also after an interrupt
    skipped = tuple(t.name for t in p.targets if t.index in p.done)
    return Summary(p.info.seed, tuple(recorded), skipped, calls, job.req.executed_steps)

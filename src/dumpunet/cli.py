"""The ``dumpunet`` command line. Each command parses, calls one library function, prints.

torch and diffusers are imported inside the recording commands only, so the analysis commands
(and every ``--help``) start fast on a machine without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from dumpunet._version import __version__
from dumpunet.a1111_prompts import EMPHASIS_MODES
from dumpunet.cli_options import sigterm_as_interrupt as _sigterm_as_interrupt
from dumpunet.analyzer.pick import Pick
from dumpunet.cli_options import (
    PATH,
    STORE,
    jobs_option,
    json_option,
    quiet_option,
    renamed,
    storage_options,
    take,
    take_renamed,
    value_options,
)
from dumpunet.cli_options import with_options as _with
from dumpunet.cli_stats import COMMANDS as STATS_COMMANDS
from dumpunet.cli_views import COMMANDS
from dumpunet.errors import DumpUnetError
from dumpunet.layouts import BUILTIN_LAYOUTS
from dumpunet.prompt_lists import PromptListOptions, plural
from dumpunet.store.location import StoreUrl
from dumpunet.store.schema import human_bytes


class _Group(click.Group):
    """Turn dumpunet's own errors into one readable message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DumpUnetError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dumpunet")
def main() -> None:
    """See inside a Stable Diffusion U-Net: record once, render offline.

    \b
    dumpunet record --prompt "a cute girl, pink hair" --out girl.zarr
    dumpunet info girl.zarr
    """


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="diffusers")


# ----------------------------------------------------------------------------- record


_GENERATION_OPTIONS = [
    click.option("--model", default="tiny-sd1", show_default=True,
                  help="tiny-sd1, tiny-sdxl, a diffusers folder, a .safetensors/.ckpt file, or a hub id (online)."),
    click.option("--config", type=PATH, default=None,
                  help="Single-file checkpoints: a diffusers folder whose configs replace the ones dumpunet ships."),
    click.option("--prediction-type", type=click.Choice(["epsilon", "v_prediction"]), default=None,
                  help="Single-file checkpoints: the parameterization, instead of the detected one (SD2 768-v: v_prediction)."),
    click.option("--infotext", default=None,
                  help="A1111 generation parameters: an image it saved (PNG/JPEG/WebP) or the pasted text; "
                       "the options given here win."),
    click.option("--prompt", default="", help="Prompt text."),
    click.option("--negative-prompt", default="", help="Negative prompt (the unconditional half of cfg)."),
    click.option("--sampling-steps", default=20, show_default=True, type=int, help="Sampling steps (the count)."),
    renamed("--steps", "--sampling-steps", "sampling_steps", type=int,
            note=" (--steps will choose the steps to record, as in render; today that is --record-steps)"),
    click.option("--emphasis", type=click.Choice(EMPHASIS_MODES), default="original",
                  show_default=True, help="A1111 emphasis mode for (word:1.2) weights; none reads brackets as text."),
    click.option("--clip-skip", default=1, show_default=True, type=int,
                  help="A1111 clip skip: read the text encoder's Nth layer from the end (1 = last)."),
    click.option("--lora", "loras", multiple=True, metavar="FILE[:WEIGHT]",
                  help="Load a LoRA (.safetensors, or .pt/.ckpt read weights-only) with this weight (default 1); repeatable."),
    click.option("--lora-dir", type=PATH, default=None,
                  help="Folder where prompt tags <lora:NAME:WEIGHT> find NAME.safetensors (A1111's models/Lora)."),
    click.option("--embedding", "embeddings", multiple=True, type=PATH,
                  help="Textual-inversion embedding file; its file name (without extension) is the prompt token; repeatable."),
    click.option("--sampler", default="Euler a", show_default=True, help="A1111 sampler name, e.g. 'DPM++ 2M Karras'."),
    click.option("--schedule", default="Automatic", show_default=True,
                  help="A1111 schedule type: automatic, uniform, karras, exponential or beta (docs/samplers.md)."),
    click.option("--cfg", default=7.0, show_default=True, type=float, help="Classifier-free guidance scale (<= 1 turns it off)."),
    click.option("--seed", default=-1, show_default=True, type=int, help="Seed; image i of a batch uses seed+i; -1 = random."),
    click.option("--width", type=int, default=None, help="Image width (default: the model's)."),
    click.option("--height", type=int, default=None, help="Image height (default: the model's)."),
    click.option("--batch-size", default=1, show_default=True, type=int, help="Images per run."),
    click.option("--record-steps", default="",
                  help="Steps to record, e.g. '1,5,10' or '1-20(+5)' (what --steps chooses in render); empty = all."),
    click.option("--inputs", is_flag=True, help="Also record each block's input."),
    click.option("--dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True, help="Stored activation dtype."),
    click.option("--device", default=None, help="torch device (default: cuda if available, else cpu)."),
    click.option("--init-image", type=PATH, default=None, help="img2img: start from this image."),
    click.option("--strength", default=0.6, show_default=True, type=float, help="img2img strength."),
    click.option("--attention", default="qk", show_default=True,
                  help="Cross-attention features to record: qk (probabilities), k, vqk, comma-separated, or none."),
    click.option("--attention-blocks", default="", help="Blocks whose cross-attention is recorded; empty = all."),
    click.option("--attention-heads", type=click.Choice(["all", "mean"]), default="all", show_default=True,
                  help="Cross-attention qk: store every head, or their mean (1/heads of the bytes)."),
    click.option("--attention-tokens", default="",
                  help="Cross-attention qk and k: keep only these token positions, e.g. '1-8' or '1,4,5' (as attention "
                       "grids label them: 5:girl); empty = every token."),
    click.option("--self-attention", is_flag=True, help="Also record self-attention maps (large: see the filters)."),
    click.option("--self-attention-blocks", default="", help="Blocks whose self-attention is recorded; empty = all."),
    click.option("--self-attention-steps", default="", help="Steps at which self-attention is recorded; empty = all."),
    click.option("--self-attention-heads", type=click.Choice(["all", "mean"]), default="all", show_default=True,
                  help="Store every head, or their mean."),
    click.option("--query-region", default=None, help="Self-attention: only queries in x0,y0,x1,y1 (fractions of the image)."),
    click.option("--query-stride", default=1, show_default=True, type=int, help="Self-attention: every Nth query row and column."),
    click.option("--max-bytes", type=int, default=None, help="Refuse to record more than this (default: the free disk space)."),
    click.option("--out", type=STORE, default=None,
                  help="Store to create (required; with --prompts: or --out-dir): a directory, or a URL "
                       "(s3://bucket/girl.zarr, gs://...) uploaded while recording."),
    click.option("--overwrite", is_flag=True, help="Replace an existing dumpunet store at --out."),
    click.option("--dry-run", is_flag=True, help="Print the size estimate and exit."),
    click.option("--disk-speed", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MB/S",
                  help="The disk's write speed for the duration estimate (default: measured once per disk and cached, "
                       "for recordings of 1 GB or more)."),
    quiet_option(),
    json_option("the size estimate and (unless --dry-run) what was recorded: store, seed, steps, calls, runs"),
]
"""Options shared by record and sweep: model, sampling, what to record, where to write."""


@main.command()
@_with(_GENERATION_OPTIONS)
@click.option("--blocks", default="", help="Blocks to record, e.g. 'IN00-OUT11(+2)'; empty = all; none = attention only.")
@click.option("--pair", is_flag=True, help="Record a base run and a layered run (per-block prompts) into one store.")
@click.option("--base", default=None, help="With --pair: the base prompt (default: the prompt with every (~: :~) group erased).")
@_with(value_options(PromptListOptions))
@storage_options
def record(**opts: Any) -> None:
    """Generate one image while recording U-Net blocks and attention into a zarr store.

    Per-block prompts: 'a (~: IN00-OUT11: cute; M00: excellent :~) girl' (see dumpunet explain).
    Many prompts: --prompts FILE records each as its own run (p0000, p0001, ...) of one store, or
    with --out-dir as one store each; the same command again skips the prompts already recorded.

    \b
    dumpunet record --prompt "a cute girl, pink hair" --sampling-steps 20 \\
        --sampler "DPM++ 2M Karras" --cfg 7 --seed 1719471015 --blocks IN00-OUT11 --out girl.zarr
    dumpunet record --prompts prompts.txt --sampling-steps 20 --seed 1 --blocks IN00-OUT11 --out prompts.zarr
    """
    take_renamed(click.get_current_context(), opts)
    _record_one_or_many(opts)


def _record_one_or_many(opts: dict[str, Any]) -> None:
    """record and sweep: one recording (--out), or every prompt of --prompts FILE (--out or --out-dir)."""
    ctx = click.get_current_context()
    try:
        lists = take(PromptListOptions, opts)
    except DumpUnetError as exc:
        raise click.UsageError(str(exc)) from None
    if lists.prompts is None:
        _require_out(opts)
        _record(opts)
        return
    given = [flag for flag, name in (("--prompt", "prompt"), ("--infotext", "infotext"))
             if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--prompts takes the prompts from its file; give {given[0]} or --prompts, not both")
    if (opts["out"] is None) == (lists.out_dir is None):
        raise click.UsageError("--prompts records into one store (--out) or one store a prompt (--out-dir): give one of them")
    if isinstance(lists.out_dir, StoreUrl):
        raise click.UsageError("--out-dir takes a local folder; record to a URL with --out URL (one store), or copy "
                               "each store with dumpunet copy")
    opts.pop("infotext")
    _record_prompts(opts, lists)


@main.command()
@_with(_GENERATION_OPTIONS)
@click.option("--insert", required=True, help="Text inserted into one block at a time, e.g. 'bad anatomy'.")
@click.option("--into-blocks", default="", help="Blocks to insert it into, one run each; empty = all.")
@click.option("--record-blocks", default="", help="Blocks recorded in every run (record's --blocks); empty = all.")
@renamed("--blocks", "--into-blocks", "into_blocks", note=" (--blocks will name the blocks to record, as in record; "
         "today that is --record-blocks)")
@click.option("--skip-no-xattn", is_flag=True,
              help="Leave out blocks without cross-attention (their runs equal the base; they are warned about otherwise).")
@_with(value_options(PromptListOptions))
@storage_options
def sweep(**opts: Any) -> None:
    """Record a base run and one run per block with TEXT inserted only there, paired in one store.

    Run BLOCK uses '<prompt>, (~:BLOCK:<insert>:~)'; the base run gets '<prompt>, ' (that
    group erased), the same seed and settings. Render the contact sheet with 'render --sweep'
    and the differences with 'diff --pair BLOCK'. Text inserted into a block without
    cross-attention reaches nothing (9 of 25 SD1 blocks): a warning names them, and
    --skip-no-xattn leaves them out.

    Many prompts: --prompts FILE sweeps each prompt of the file: runs p0000-base, p0000-IN00, ...
    of one store (contact sheet: 'render --sweep --run p0000-base'), or with --out-dir one sweep
    store each; the same command again skips the prompts already swept.

    \b
    dumpunet sweep --prompt "a cute school girl, pink hair, wide shot" \\
        --insert "bad anatomy" --into-blocks IN00-OUT11 --out sweep.zarr
    dumpunet sweep --prompts prompts.txt --insert "bad anatomy" --into-blocks IN04-IN08 --out sweeps.zarr
    """
    take_renamed(click.get_current_context(), opts)
    opts["sweep_insert"] = opts.pop("insert")
    opts["sweep_blocks"] = opts.pop("into_blocks")
    opts["blocks"] = opts.pop("record_blocks")
    _record_one_or_many(opts)


def _require_out(opts: dict[str, Any]) -> None:
    if opts["out"] is None:
        raise click.UsageError("Missing option '--out'.")


def _say(lines: Any, *, quiet: bool, dry_run: bool) -> None:
    """Print estimate lines on stderr (under --quiet only the warnings, unless it is a dry run)."""
    for line in lines:
        if dry_run or not quiet or line.startswith("warning:"):
            click.echo(line, err=True)


def _estimate_json(est: Any) -> dict[str, Any]:
    return {"total_bytes": est.total_bytes, "run_bytes": est.run_bytes, "runs": est.runs, "block_bytes": est.block_bytes,
            "attention_bytes": est.attention_bytes, "self_attention_bytes": est.self_attention_bytes}


def _record_prompts(opts: dict[str, Any], lists: PromptListOptions) -> None:
    """record --prompts: plan (nothing written on a bad row or a differing store), load once, record what is left."""
    _quiet_libraries()
    remote = opts["out"] if isinstance(opts["out"], StoreUrl) else None
    with _local_scratch(remote, opts):
        _record_prompt_list(opts, lists, remote)


@contextlib.contextmanager
def _local_scratch(remote: StoreUrl | None, opts: dict[str, Any]) -> Iterator[None]:
    """For ``--out URL``: ``opts["out"]`` becomes a store in a new local folder, removed at the end."""
    if remote is None:
        yield
        return
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dumpunet-upload-"))
    opts["out"] = folder / remote.name
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _record_prompt_list(opts: dict[str, Any], lists: PromptListOptions, remote: StoreUrl | None) -> None:
    from dumpunet.recorder import job as recording
    from dumpunet.recorder import prompt_runs

    dry_run, as_json, disk_speed = opts.pop("dry_run"), opts.pop("as_json"), opts.pop("disk_speed")
    quiet = opts["quiet"]
    plan = prompt_runs.plan(opts, lists, remote=remote)
    where = plan.where
    for line in (plan.grown_line(), plan.skipped_line()):
        if line and not quiet:
            click.echo(line, err=True)
    if not plan.todo:  # the model is not even loaded
        if as_json:
            click.echo(json.dumps({"out": str(where), "prompts": len(plan.targets), "seed": plan.info.seed,
                                   "recorded": [], "skipped": [t.name for t in plan.targets]}, indent=2))
        if not quiet:
            click.echo(f"nothing to record: all {len(plan.targets)} prompts are recorded in {where}", err=True)
        return
    job = prompt_runs.load(plan)
    est = prompt_runs.estimate(job, plan)
    _say(est.lines(), quiet=quiet, dry_run=dry_run)
    if not dry_run:
        recording.check_budget(job.req, est)
    timing = recording.disk_time(job, est, disk_speed_mb=disk_speed)
    _say(timing.lines() if timing is not None else (), quiet=quiet, dry_run=dry_run)
    estimate = _estimate_json(est)
    if dry_run:
        if as_json:
            click.echo(json.dumps({"out": str(where), "prompts": len(plan.targets), "seed": plan.info.seed,
                                   "skipped": [t.name for t in plan.targets if t.index in plan.done],
                                   "estimate": estimate}, indent=2))
        return
    _sigterm_as_interrupt()
    try:
        summary = prompt_runs.execute(job, plan, quiet=quiet)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; the prompts recorded completely stay in {where}: run the same command "
                                   "again to record the rest (they are skipped, the interrupted one is recorded again)") from None
    if as_json:
        click.echo(json.dumps({"out": str(where), "prompts": len(plan.targets), "seed": summary.seed,
                               "recorded": list(summary.recorded), "skipped": list(summary.skipped),
                               "steps": summary.steps, "calls": summary.calls, "estimate": estimate}, indent=2))
    if not quiet:
        before = f"; {len(summary.skipped)} were recorded before" if summary.skipped else ""
        click.echo(f"recorded {plural(len(summary.recorded), 'prompt')} ({summary.calls} U-Net calls, seed {summary.seed} "
                   f"where a row gives none) into {where}{before}", err=True)


def _record(opts: dict[str, Any]) -> None:
    _quiet_libraries()
    from dumpunet.recorder import job as recording

    dry_run, as_json = opts.pop("dry_run"), opts.pop("as_json")
    info = _infotext(opts)
    disk_speed = opts.pop("disk_speed")
    remote = opts["out"] if isinstance(opts["out"], StoreUrl) else None
    with _scratch_for(remote, opts, dry_run=dry_run) as scratch:
        req = recording.RecordRequest(**opts)
        job = recording.prepare(req)
        if info is not None:
            from dumpunet.infotext import model_hash_note

            note = model_hash_note(info, job.model_info)
            if note:
                click.echo(note, err=True)
        est = recording.estimate(job)
        _say(est.lines(), quiet=req.quiet, dry_run=dry_run)
        if not dry_run:
            recording.check_budget(req, est)
        timing = recording.disk_time(job, est, disk_speed_mb=disk_speed)
        _say(timing.lines() if timing is not None else (), quiet=req.quiet, dry_run=dry_run)
        estimate = _estimate_json(est)
        if dry_run:
            if as_json:
                click.echo(json.dumps({"estimate": estimate}, indent=2))
            return
        _sigterm_as_interrupt()
        uploader = _start_upload(scratch, remote)
        try:
            summary = recording.execute(job)
        except KeyboardInterrupt:
            _finish_upload(uploader)
            raise click.ClickException(_interrupted_message(remote or req.out)) from None
        except BaseException:
            _finish_upload(uploader)
            raise
        _finish_upload(uploader)
    out = remote or summary.out
    if as_json:
        click.echo(json.dumps({"out": str(out), "seed": summary.seed, "steps": summary.steps,
                               "calls": summary.calls, "runs": list(summary.runs), "estimate": estimate}, indent=2))
    if not req.quiet:
        what = f"runs {', '.join(summary.runs)}" if len(summary.runs) > 1 else f"{summary.steps} steps"
        click.echo(f"recorded {summary.calls} U-Net calls ({what}, seed {summary.seed}) into {out}", err=True)


def _infotext(opts: dict[str, Any]) -> Any:
    """Fill ``opts`` from --infotext where the user gave no option; warn once about the fields not used."""
    source = opts.pop("infotext")
    if source is None:
        return None
    from dumpunet.infotext import read_infotext

    ctx = click.get_current_context()
    defaults = (None, click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
    given = {getattr(param, "new_name", param.name) for param in ctx.command.params  # an old spelling counts as its new name
             if ctx.get_parameter_source(param.name) not in defaults}
    info = read_infotext(source)
    opts.update(info.request_fields(given=given))
    if info.warning():
        click.echo(f"warning: {info.warning()}", err=True)
    return info


@contextlib.contextmanager
def _scratch_for(remote: StoreUrl | None, opts: dict[str, Any], *, dry_run: bool) -> Iterator[Path | None]:
    """For ``--out URL``: record into a local scratch folder (removed at the end), after checking the URL's place."""
    if remote is None:
        yield None
        return
    from dumpunet.store.transfer import check_upload_target

    check_upload_target(remote, overwrite=opts["overwrite"], delete=not dry_run)
    with _local_scratch(remote, opts):
        yield opts["out"]


def _start_upload(scratch: Path | None, remote: StoreUrl | None) -> Any:
    if scratch is None or remote is None:
        return None
    from dumpunet.store.transfer import Uploader, upload_interval

    return Uploader(scratch, remote, interval=upload_interval()).start()


def _finish_upload(uploader: Any) -> None:
    if uploader is not None:
        uploader.close()


def _interrupted_message(out: Path | StoreUrl) -> str:
    from dumpunet.store import open_store
    from dumpunet.specs import format_ints

    try:
        steps = format_ints(open_store(out).steps)
    except DumpUnetError:
        steps = ""
    return f"interrupted; complete steps ({steps or 'none'}) stay readable in {out}"


# ----------------------------------------------------------------------------- info / validate


@main.command()
@click.argument("store", type=STORE)
@storage_options
@json_option("the store's summary: model, parameters, runs, blocks with shapes, attention layers, steps, size")
def info(store: Path, as_json: bool) -> None:
    """Show what a store holds: model, parameters, blocks, shapes, steps, size.

    \b
    dumpunet info girl.zarr
    """
    from dumpunet.store.summary import describe, summarize

    summary = summarize(store)
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else describe(summary))


@main.command()
@click.argument("store", type=STORE)
@storage_options
@click.option("--quick", is_flag=True, help="Skip the byte-size check of every chunk file and the decoding of compressed ones "
              "(existence, links and special files are still checked).")
@quiet_option()
@json_option('{"store", "ok", "problems", "notes"} (exit status 1 if not ok)')
def validate(store: Path, quick: bool, quiet: bool, as_json: bool) -> None:
    """Check a store; exit 0 if it is sound, else list what is wrong and exit 1.

    --quiet prints the problems only (no notes, no closing "ok" line): the exit status says.

    \b
    dumpunet validate girl.zarr
    """
    from dumpunet.store.validate import validate as check

    report = check(store, quick=quick)
    if as_json:
        click.echo(json.dumps({"store": str(store), "ok": report.ok, "problems": list(report.problems),
                               "notes": list(report.notes)}, indent=2))
        if not report.ok:
            click.get_current_context().exit(1)
        return
    for note in () if quiet else report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    if not report.ok:
        raise click.ClickException(f"{store} is not sound ({len(report.problems)} problem(s))")
    if not quiet:
        click.echo(f"{store}: ok")


@main.command()
@click.argument("src", type=STORE)
@click.argument("dst", type=STORE)
@storage_options
@quiet_option()
@json_option('{"src", "dst", "keys", "copied", "skipped", "bytes_copied", "arrays"}: what the copy did')
def copy(src: Path | StoreUrl, dst: Path | StoreUrl, quiet: bool, as_json: bool) -> None:
    """Copy a store between a folder and a URL (either way), resumably, verifying chunk counts.

    An interrupted copy is not a store yet (its root document is written last); run the same
    copy again to finish it: files already there with the same size are skipped.

    \b
    dumpunet copy girl.zarr s3://bucket/girl.zarr
    dumpunet copy s3://bucket/girl.zarr girl-copy.zarr --storage-option anon=true
    """
    from dumpunet.store.transfer import copy_store

    _sigterm_as_interrupt()
    try:
        report = copy_store(src, dst, progress=not quiet)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; {dst} is an unfinished copy: run the same copy again to finish it") from None
    if as_json:
        click.echo(json.dumps({"src": str(src), "dst": str(dst), "keys": report.keys, "copied": report.copied,
                               "skipped": report.skipped, "bytes_copied": report.bytes_copied,
                               "arrays": report.arrays}, indent=2))
    if quiet:
        return
    resumed = f", {report.skipped} already there" if report.skipped else ""
    click.echo(f"copied {report.copied} files ({human_bytes(report.bytes_copied)}{resumed}) to {dst}; "
               f"chunk counts of {report.arrays} arrays verified", err=True)


# ----------------------------------------------------------------------------- explain


@main.command()
@click.argument("prompt")
@click.option("--negative-prompt", "negative", default="", help="Negative prompt; it may hold groups too.")
@renamed("--negative", "--negative-prompt", "negative")
@click.option("--model", type=click.Choice(list(BUILTIN_LAYOUTS)), default="sd1", show_default=True,
              help="Built-in block layout: sd1/sd2/tiny-sd1 (25 blocks) or sdxl/tiny-sdxl (19 blocks).")
@click.option("--store", "store_path", type=PATH, default=None,
              help="Use this recorded store's block table instead of --model.")
@click.option("--sampling-steps", "steps", default=20, show_default=True, type=int,
              help="Sampling steps (the count), for A1111 prompt editing.")
@renamed("--steps", "--sampling-steps", "steps", type=int)
@click.option("--emphasis", type=click.Choice(EMPHASIS_MODES), default="original", show_default=True,
              help="A1111 emphasis mode, as for record.")
@json_option('{"positive": {block: prompt}, "negative": {...}, "a1111": {"positive": ..., "negative": ...}}')
@click.pass_context
def explain(ctx: click.Context, prompt: str, negative: str, model: str, store_path: Path | None, steps: int,
            emphasis: str, as_json: bool, **old: Any) -> None:
    """Show the prompt every block gets from a per-block prompt, before any GPU time is spent.

    \b
    dumpunet explain "a (~: IN00-OUT11: cute; M00: excellent :~) girl"
    """
    from dumpunet.a1111_chunks import a1111_summary, explain_a1111
    from dumpunet.a1111_networks import check_outside_groups, extract_networks
    from dumpunet.layouts import BlockLayout, builtin_layout
    from dumpunet.prompts import explain as explain_prompts
    from dumpunet.prompts import parse_layer_prompt

    take_renamed(ctx, old)
    negative, steps = old.get("negative", negative), old.get("steps", steps)
    if store_path is None:
        layout = builtin_layout(model)
    elif ctx.get_parameter_source("model") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("give --model or --store, not both")
    else:
        from dumpunet.store import open_store

        layout = BlockLayout.from_block_table(str(store_path), open_store(store_path).block_table)
    result = explain_prompts(prompt, negative, layout=layout)  # a syntax error names the prompt it is in
    for text in (prompt, negative):  # a <lora:...> tag inside a per-block group is refused, as by record
        check_outside_groups(text, [(g.start, g.end) for g in parse_layer_prompt(text).groups])
    if extract_networks(prompt).loras or extract_networks(negative).loras:
        result = explain_prompts(extract_networks(prompt).text, extract_networks(negative).text, layout=layout)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if steps < 1:
        raise click.BadParameter(f"must be at least 1, got {steps}", param_hint="--sampling-steps")
    # A1111 syntax is read in the text outside per-block groups: '(~:' and ':~)' are not emphasis
    a1111 = {which: explain_a1111(parse_layer_prompt(text).base(), steps, emphasis=emphasis)
             for which, text in (("positive", prompt), ("negative", negative))}
    if as_json:
        doc = {"positive": result.positive, "negative": result.negative, "a1111": a1111}
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(result.lines()))
        for which, explained in a1111.items():
            line = a1111_summary(explained)
            if line:
                click.echo(f"A1111 {which} prompt: {line}")

# ----------------------------------------------------------------------------- analysis

for _command in (*COMMANDS, *STATS_COMMANDS):
    main.add_command(_command)


# ----------------------------------------------------------------------------- view


@main.command()
@click.argument("stores", nargs=-1, required=True, type=STORE)
@storage_options
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--no-browser", is_flag=True, help="Do not open the default browser; just print the address.")
@click.option("--export", "export_to", type=PATH, default=None,
              help="Instead of serving: write a static, self-contained report folder that opens from disk "
                   "(default colours; --blocks, --steps, --images, --guidance narrow it; --channels: grids of that "
                   "subset).")
@_with(value_options(Pick, only=("blocks", "steps", "images", "guidance", "channels")))
@jobs_option()
@quiet_option()
@json_option("with --export, the manifest entries of the written files (one object per file)")
def view(stores: tuple[Path, ...], port: int, no_browser: bool, export_to: Path | None, jobs: int | None, quiet: bool,
         as_json: bool, **opts: Any) -> None:
    """Explore stores in the browser: blocks, steps, channels, colours, attention, pairs.

    Serves a local page on 127.0.0.1 only, for the stores named here; Ctrl-C stops it.
    Several stores: one beside another, or their difference (the page's "minus" menu).
    With --export, writes the page and its pictures to a folder instead (open its index.html),
    with several stores their differences too.

    \b
    dumpunet view girl.zarr
    dumpunet view girl.zarr --port 8765 --no-browser
    dumpunet view a.zarr b.zarr
    dumpunet view girl.zarr --export report --steps '1-20(+5)'
    dumpunet view a.zarr b.zarr --export report --steps 20 --channels 0-15
    """
    pick = take(Pick, opts)
    if export_to is None:
        if pick != Pick() or as_json or jobs is not None:
            raise click.UsageError("--blocks, --steps, --images, --guidance, --channels, --jobs and --json go with "
                                   "--export")
        from dumpunet.viewer.server import serve

        serve(list(stores), port=port, open_browser=not no_browser)
        return
    from dumpunet.viewer.report import export_report

    files = export_report(list(stores), export_to, pick, progress=not quiet, jobs=jobs)
    if as_json:
        click.echo(json.dumps([f.params for f in files], indent=1))
        return
    if not quiet:
        views = sum(1 for f in files if f.params["kind"] == "report-view")
        click.echo(f"wrote a report of {views} views to {export_to}; open {export_to / 'index.html'}", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

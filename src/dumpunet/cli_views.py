"""The analysis commands of the ``dumpunet`` CLI: render, export, diff, attention, heatmap.

Each parses its options into the analysis values (:class:`~dumpunet.analyzer.pick.Pick`,
:class:`~dumpunet.analyzer.color.spec.ColorSpec`, :class:`~dumpunet.analyzer.style.GridStyle`),
whose fields generate the options (:mod:`.cli_options`), calls one library function and prints.
Options that belong to no value are stated once in :data:`OPTIONS`. The analyzer itself is
imported inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from dumpunet.analyzer.color.spec import ATTENTION_COLOR, DIFF_COLOR, METHODS, SCOPES, ColorSpec
from dumpunet.analyzer.colormaps import COLORMAPS, DEFAULT_COLORMAP
from dumpunet.analyzer.pick import Pick
from dumpunet.analyzer.style import AVERAGES, GridStyle
from dumpunet.analyzer.tensor_files import FORMATS
from dumpunet.analyzer.timeviews import ANIMATIONS, FRAME_MS
from dumpunet.cli_options import (
    JOBS,
    QUIET,
    STORE,
    STORE_RUN,
    StoreRun,
    click_option,
    json_spec,
    sigterm_as_interrupt,
    storage_options,
    take,
    value_options,
    with_options,
)
from dumpunet.options import OptionSpec, options_of

__all__ = ["COMMANDS", "OPTIONS"]

OPTIONS = {o.name: o for o in [
    OptionSpec("out", "Output folder (made if missing; manifest.json beside the files lists them).", type=Path,
               required=True),
    JOBS,
    OptionSpec("dask", "Draw and encode on dask: a LocalCluster of --jobs worker processes, or the cluster of "
               "--scheduler. Workers read the stores by path; the files are the same.", default=False,
               flag_value=True),
    OptionSpec("scheduler", "With --dask (implied): the address of a running dask.distributed scheduler, "
               "tcp://HOST:PORT, whose workers see the stores at the same paths; default: a LocalCluster."),
    QUIET,
    json_spec("the manifest entries of the written files (one object per file)"),
    OptionSpec("sweep", "Instead: a contact sheet of a sweep store's final images, base first, one per block, "
               "labelled (sweep-img<i>.png); takes only --images, and --run: the base run of one sweep in a store of "
               "several (sweep --prompts: p0001-base).", default=False, flag_value=True),
    OptionSpec("final", "Instead: the run's final images, one PNG each (final-img<i>.png); takes only --run and "
               "--images.", default=False, flag_value=True),
    OptionSpec("format", "bin: one float32 file per channel (the original's dump; attention: per head x token); "
               "npy/safetensors: one per block (or layer) and step.", default="bin", choices=FORMATS),
    OptionSpec("layers", "Export these attention layers instead of blocks, e.g. 'IN01.attn2' or 'IN04-OUT08' "
               "(their recorded layers); --feature says which."),
    OptionSpec("export", "Also write the layered - base tensors as files (the original's \"Dump difference tensors "
               "to files\"): bin, npy or safetensors, as export writes features.", choices=FORMATS),
    OptionSpec("head_average", "Reduce the heads to one map (qk: per token; vqk: over all channels): mean, or the "
               "original's 1-norm and 2-norm (divided by the count); l1, l2: not divided.", choices=AVERAGES,
               case_sensitive=False, flag="--average"),
    OptionSpec("pair", "The pair to compare, by label (a sweep: the block name); default: the only or first pair."),
    OptionSpec("pair_difference", "Draw the difference layered - base of this pair of the store (by label; a sweep: "
               "the block name), in diff's colours.", flag="--pair"),
    OptionSpec("heads", "Only these heads, e.g. '0' or '0-3' (default: every head); with --average, their average."),
    OptionSpec("finals", "Skip the final images (for runs that did not finish).", default=True, flag_value=False,
               flag="--no-finals"),
    OptionSpec("tokens", "Words of the prompt and/or token indices, e.g. 'pink,hair' or '0-10'; empty = the "
               "prompt's tokens (of an empty prompt: <start> and <end>).", default=""),
    OptionSpec("feature", "qk: attention probabilities; k: keys; vqk: per-head output.", default="qk",
               choices=("qk", "k", "vqk")),
    OptionSpec("query", "The query pixel as x,y fractions of the image: self-attention layers (recorded with "
               "--self-attention); for heatmap, instead of --word: where that pixel attends."),
    OptionSpec("word", "A word of the prompt (or several, comma-separated: one file each): cross-attention "
               "heatmap."),
    OptionSpec("merge", "With several --word: one heatmap of their sum instead of one per word.", default=False,
               flag_value=True),
    OptionSpec("colormap", "Colour map of the heatmap (perceptual; its colour bar is drawn below).",
               default=DEFAULT_COLORMAP, choices=COLORMAPS),
    OptionSpec("plain_overlay", "The bare overlay, as the viewer shows it: no title strip, colour bar or query marker.",
               default=False, flag_value=True, flag="--plain"),
    OptionSpec("plain_grid", "The grid with its head and token headers only: no title strip or colour bar.",
               default=False, flag_value=True, flag="--plain"),
    OptionSpec("aggregate", "Instead of one grid per layer: per map size (SD1: 64x64 ... 8x8), the cross-attention "
               "layers of that size averaged over heads and layers (no resampling), one row of token maps "
               "(prompt-to-prompt's aggregate), with the maps as .npy.", choices=("resolution",)),
    OptionSpec("alpha", "Opacity of the heatmap.", default=0.5, type=float, minimum=0, maximum=1),
    OptionSpec("animate", "Instead of one file per step: one animation over the selected steps per block, image "
               "and guidance half (png: lossless animated PNG, each frame the single-step render; gif: 256 colours "
               "a frame). --auto-scope run keeps colours comparable across frames.", choices=ANIMATIONS),
    OptionSpec("frame_ms", "With --animate: milliseconds a frame.", default=FRAME_MS, type=int, minimum=10,
               maximum=60_000),
    OptionSpec("mosaic", "Instead of one file per grid: one mosaic per image and guidance half, blocks as rows and "
               "steps as columns, each cell the block's bare grid (--average mean: one map a cell).", default=False,
               flag_value=True),
    OptionSpec("skip_damaged", "A map whose chunk is missing or damaged: skip its file with a warning line on "
               "stderr (and a count at the end) instead of stopping with the error.", default=False,
               flag_value=True),
]}
"""The options that belong to no analysis value, each stated once."""

_WRITTEN = ["out", "quiet", "as_json"]
_LAYERS = {"blocks": ("--layers",)}  # attention views name layers; --layers reads as users say it
_NO_PCA = {"method": tuple(m for m in METHODS if m != "PCA")}
_NO_HEAD = {"auto_scope": tuple(s for s in SCOPES if s != "head")}  # head rows exist in attention grids only
_AUTO_SCALE = click_option(next(o for o in options_of(GridStyle) if o.name == "scale").with_default(None))
"""Attention's --scale: by default, enough to make tiles at least 32 pixels on a side."""


def _options(*names: str) -> list[Any]:
    return [click_option(OPTIONS[name]) for name in names]


def _echo_written(files: list[Any], out: Path, noun: str, as_json: bool, quiet: bool = False) -> None:
    if as_json:
        click.echo(json.dumps([f.params for f in files], indent=1))
    elif not quiet:
        plural = "" if len(files) == 1 else "s"
        click.echo(f"wrote {len(files)} {noun}{plural} to {out} (parameters in manifest.json)", err=True)


def _scheduler(dask: bool, scheduler: str | None) -> str | None:
    """The library's ``scheduler``: None (the thread pool), ``"local"`` (--dask) or --scheduler's address."""
    return scheduler if scheduler is not None else ("local" if dask else None)


def _point(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        x, y = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected x,y as fractions of the image, got {value!r}") from None
    return (x, y)


@click.command()
@click.argument("stores", nargs=-1, required=True, type=STORE)
@storage_options
@with_options(value_options(Pick))
@with_options(value_options(GridStyle))
@with_options(value_options(ColorSpec, choices=_NO_HEAD))
@with_options(_options("animate", "frame_ms", "mosaic", "jobs", "dask", "scheduler", "skip_damaged", "sweep", "final",
                       *_WRITTEN))
@click.pass_context
def render(ctx: click.Context, stores: tuple[Path, ...], out: Path, animate: str | None, frame_ms: int, mosaic: bool,
           jobs: int | None, dask: bool, scheduler: str | None, skip_damaged: bool, sweep: bool, final: bool,
           quiet: bool, as_json: bool, **opts: Any) -> None:
    """Render block outputs as PNG grids (one tile per channel) plus a manifest.json.

    Grids are labelled (title, channel numbers, colour bar) and small maps enlarged;
    --plain writes the bare tiles.

    Several stores render into one subfolder each of --out.

    \b
    dumpunet render girl.zarr --blocks OUT11 --steps 20 --method "White/Black" \\
        --transform sigmoid --gain 1 --offset 0 --out renders/
    dumpunet render girl.zarr --blocks OUT11 --auto-scope run --animate png --out anim/
    dumpunet render girl.zarr --average mean --mosaic --out mosaic/
    dumpunet render sweep.zarr --sweep --out sheet/
    dumpunet render girl.zarr --final --out finals/
    dumpunet render runs/*.zarr --blocks OUT11 --dask --jobs 4 --out renders/
    """
    pick, style, color = take(Pick, opts), take(GridStyle, opts), take(ColorSpec, opts)
    sigterm_as_interrupt()  # so a killed render removes its temporary files and writes its manifest
    if sweep and final:
        raise click.UsageError("give --sweep (a contact sheet) or --final (each final image), not both")
    if sweep:
        _contact_sheets(ctx, stores, pick, out, as_json, quiet)
        return
    if final:
        _final_images(ctx, stores, pick, out, as_json, quiet)
        return
    from dumpunet.analyzer.render import render as render_stores

    files = render_stores(list(stores), pick, color, style, out=out, jobs=jobs, progress=not quiet,
                          skip_damaged=skip_damaged, animate=animate, mosaic=mosaic, frame_ms=frame_ms,
                          scheduler=_scheduler(dask, scheduler))
    _echo_written(files, out, "GIF file" if animate == "gif" else "PNG file", as_json, quiet)


_WRITING_PARAMS = ("stores", "images", "out", "quiet", "as_json", "jobs")


def _only(ctx: click.Context, stores: tuple[Path, ...], flag: str, what: str, allowed: tuple[str, ...]) -> None:
    """Refuse options that ``flag`` does not take (given on the command line), and more than one store."""
    given = [p.opts[0] for p in ctx.command.params if p.name not in (*_WRITING_PARAMS, *allowed)
             and ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        takes = " and ".join(f"--{a}" for a in (*allowed[1:], "images"))
        raise click.UsageError(f"{flag} {what}; it takes only {takes}, not {', '.join(given)}")
    if len(stores) != 1:
        raise click.UsageError(f"{flag} takes one store, got {len(stores)}")


def _contact_sheets(ctx: click.Context, stores: tuple[Path, ...], pick: Pick, out: Path, as_json: bool,
                    quiet: bool) -> None:
    from dumpunet.analyzer.sweep import contact_sheet

    _only(ctx, stores, "--sweep", "lays out final images", ("sweep", "run"))
    files = contact_sheet(stores[0], Pick(images=pick.images, run=pick.run), out=out)
    _echo_written(files, out, "contact sheet", as_json, quiet)


def _final_images(ctx: click.Context, stores: tuple[Path, ...], pick: Pick, out: Path, as_json: bool,
                  quiet: bool) -> None:
    from dumpunet.analyzer.finals import final_images

    _only(ctx, stores, "--final", "writes final images", ("final", "run"))
    files = final_images(stores[0], Pick(run=pick.run, images=pick.images), out=out)
    _echo_written(files, out, "final image", as_json, quiet)


@click.command()
@click.argument("store", type=STORE)
@storage_options
@with_options(value_options(Pick))
@with_options(_options("layers", "feature", "format", "jobs", "dask", "scheduler", "skip_damaged", *_WRITTEN))
@click.pass_context
def export(ctx: click.Context, store: Path, layers: str | None, feature: str, format: str,  # noqa: A002
           jobs: int | None, dask: bool, scheduler: str | None, skip_damaged: bool, out: Path, quiet: bool,
           as_json: bool, **opts: Any) -> None:
    """Export raw feature values as .bin (float32 per channel), .npy or .safetensors files.

    With --layers, attention layers instead: bin writes the original's Q*K dump, one file
    per head x token.

    \b
    dumpunet export girl.zarr --blocks OUT11 --steps 20 --format bin --out dump/
    dumpunet export girl.zarr --layers IN01.attn2 --steps 20 --format bin --out dump-attn/
    dumpunet export girl.zarr --blocks OUT09-OUT11 --format npy --dask --out dump-npy/
    """
    pick = take(Pick, opts)
    sigterm_as_interrupt()
    if layers is None:
        if ctx.get_parameter_source("feature") is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("--feature chooses what --layers exports; blocks have no attention feature")
        from dumpunet.analyzer.export import export as export_store

        files = export_store(store, pick, out=out, format=format, progress=not quiet, skip_damaged=skip_damaged,
                             scheduler=_scheduler(dask, scheduler), jobs=jobs)
    else:
        if _scheduler(dask, scheduler) is not None:
            raise click.UsageError("--dask exports block features; --layers (attention) runs in this process")
        if pick.blocks:
            raise click.UsageError("give --blocks (block features) or --layers (attention), not both")
        if skip_damaged:
            raise click.UsageError("--skip-damaged skips damaged block maps; --layers exports attention, which it "
                                   "does not cover")
        from dumpunet.analyzer.attention_export import export_attention

        files = export_attention(store, dataclasses.replace(pick, blocks=layers), out=out, format=format,
                                 feature=feature, progress=not quiet, jobs=jobs)
    _echo_written(files, out, "file", as_json, quiet)


@click.command()
@click.argument("stores", nargs=-1, required=True, type=STORE_RUN, metavar="STORE[:RUN] [BASE[:RUN]]")
@storage_options
@with_options(_options("pair"))
@with_options(value_options(Pick, skip=("run",)))
@with_options(value_options(GridStyle))
@with_options(value_options(ColorSpec, defaults=DIFF_COLOR, choices=_NO_HEAD))
@with_options(_options("export", "finals", "jobs", "dask", "scheduler", "skip_damaged", *_WRITTEN))
def diff(stores: tuple[StoreRun, ...], pair: str | None, export: str | None, finals: bool, out: Path,
         jobs: int | None, dask: bool, scheduler: str | None, skip_damaged: bool, quiet: bool, as_json: bool,
         **opts: Any) -> None:
    """Show what changed, per block and step: layered - base of a pair, or STORE - BASE of two stores.

    With one store: the two runs of a pair (record --pair, sweep; --pair picks one). With two:
    STORE - BASE, two recordings of one model at one size (a LoRA against the base model,
    sampler A against B, seed A against B, two checkpoints of one architecture); :RUN picks a run
    of either (default: the first store's only or first run, and the base's run of the same name
    or its default run). Steps are matched by step number; stores whose blocks, shapes, guidance
    halves or steps differ are refused with a line naming what differs.

    Writes difference maps diff-<block>-step<NNN>-img<i>-<guidance>-...png (coloured like
    render, labelled unless --plain). The default colours are blue-white-red over [-m, m], m the
    grid's largest |layered - base| (--transform autosym, --auto-scope block): 0 is white, the
    colour bar gives m; an --average norm (never negative) runs from white at 0 to red at m.
    Also summary.csv / summary.png: mean |layered - base| / mean |base| per block and step, to see
    at a glance which blocks and steps changed most. Beside them the final images of both runs
    and their pixel difference: final-base-, final-layered-, final-diff-, final-diff-norm-img<i>.png
    (the last stretched so the largest difference is white).

    \b
    dumpunet diff girl.zarr --blocks IN00-OUT11 --steps 1-20 --method "Red/Blue" --out diff/
    dumpunet diff sweep.zarr --pair IN04 --average 2-norm --out diff-IN04/
    dumpunet diff girl.zarr --blocks OUT11 --steps 20 --export bin --out diff-dump/
    dumpunet diff lora.zarr girl.zarr --blocks IN00-OUT11 --out diff-lora/
    """
    from dumpunet.analyzer.diff import diff as diff_pair

    if len(stores) > 2:
        raise click.UsageError(f"diff compares a pair in one store or two stores; got {len(stores)} stores")
    first, base = stores[0], (stores[1] if len(stores) == 2 else None)
    if base is None and first.run is not None:
        raise click.UsageError(f"{first.place}:{first.run} names a run; a pair in one store is picked with --pair")
    if base is not None and pair is not None:
        raise click.UsageError("--pair picks a pair in one store; with two stores, name their runs as STORE:RUN")
    pick, style, color = take(Pick, opts), take(GridStyle, opts), take(ColorSpec, opts)
    if base is not None:
        pick = dataclasses.replace(pick, run=first.run)
    sigterm_as_interrupt()
    files = diff_pair(first.place, pick, color, style, out=out, pair=pair, base=None if base is None else base.place,
                      base_run=None if base is None else base.run, finals=finals, export=export, jobs=jobs,
                      progress=not quiet, skip_damaged=skip_damaged, scheduler=_scheduler(dask, scheduler))
    _echo_written(files, out, "file", as_json, quiet)


_STORES_OR_DIFFERENCE = click.argument("stores", nargs=-1, required=True, type=STORE_RUN,
                                       metavar="STORE[:RUN] [BASE[:RUN]]")
"""attention's and heatmap's stores: one, or two whose difference STORE - BASE is drawn (as ``diff A B``)."""


def _difference(stores: tuple[StoreRun, ...], pick: Pick, pair: str | None,
                command: str) -> tuple[Any, Pick, dict[str, Any]]:
    """The store, the pick and the library's difference arguments (``pair``, ``base``, ``base_run``) of
    ``STORE[:RUN] [BASE[:RUN]]`` and ``--pair``, in diff's vocabulary (:func:`~dumpunet.cli_options.split_run`)."""
    if len(stores) > 2:
        raise click.UsageError(f"{command} draws one store, or the difference of two; got {len(stores)} stores")
    first, base = stores[0], (stores[1] if len(stores) == 2 else None)
    if base is None:
        if first.run is not None:
            raise click.UsageError(f"{first.place}:{first.run} names a run; with one store, pick it with --run")
        return first.place, pick, {"pair": pair} if pair is not None else {}
    if pair is not None:
        raise click.UsageError("--pair picks a pair in one store; with two stores, name their runs as STORE:RUN")
    if pick.run is not None:
        raise click.UsageError("with two stores, name their runs as STORE:RUN, not with --run")
    return first.place, dataclasses.replace(pick, run=first.run), {"base": base.place, "base_run": base.run}


def _difference_colour(ctx: click.Context, color: ColorSpec) -> ColorSpec:
    """A difference's colours: the options given on the command line over diff's defaults (:data:`DIFF_COLOR`)."""
    given = {f.name: getattr(color, f.name) for f in dataclasses.fields(ColorSpec)
             if f.init and ctx.get_parameter_source(f.name) is click.core.ParameterSource.COMMANDLINE}
    return dataclasses.replace(DIFF_COLOR, **given)


@click.command()
@_STORES_OR_DIFFERENCE
@storage_options
@with_options(value_options(Pick, skip=("channels", "which"), aliases=_LAYERS))
@with_options(_options("pair_difference", "tokens", "feature", "query", "heads", "head_average", "aggregate"))
@with_options([_AUTO_SCALE])
@with_options(value_options(ColorSpec, defaults=ATTENTION_COLOR, choices=_NO_PCA))
@with_options(_options("plain_grid", "jobs", *_WRITTEN))
@click.pass_context
def attention(ctx: click.Context, stores: tuple[StoreRun, ...], pair_difference: str | None, tokens: str, feature: str,
              query: str | None, heads: str | None, head_average: str | None, aggregate: str | None,
              scale: int | None, plain_grid: bool, jobs: int | None, out: Path, quiet: bool, as_json: bool,
              **opts: Any) -> None:
    """Render heads x tokens grids of attention maps: which token each head looks at.

    Without --scale, tiles are enlarged to at least 32 pixels on a side. Grids get a title
    strip (with the colour scope and its ranges) and a colour bar; --plain leaves them out.

    The difference of two runs, as diff draws block outputs: with --pair, layered - base of
    that pair; with two stores, STORE - BASE (BASE's run of the same name or its default run;
    :RUN picks another, and STORE:RUN the first store's). Maps are subtracted before any
    --average, tokens compared by position; colours default to diff's (blue-white-red over
    [-m, m], white = no change; options given override them); files start with diff-.
    Stores of another U-Net layout or runs with other halves, layers or steps are refused.

    \b
    dumpunet attention girl.zarr --layers IN04-OUT08 --steps 1,5,10 --tokens "pink,hair" --out attn/
    dumpunet attention girl.zarr --layers IN04.attn2 --average 2-norm --out attn/
    dumpunet attention girl.zarr --steps 20 --aggregate resolution --out attn-p2p/
    dumpunet attention pair.zarr --pair layered --layers M00 --steps 20 --out attn-diff/
    dumpunet attention a.zarr b.zarr --layers IN04.attn2 --heads 0 --out attn-ab/
    """
    from dumpunet.analyzer.attention_grids import render_attention

    store, pick, difference = _difference(stores, take(Pick, opts), pair_difference, "attention")
    color = take(ColorSpec, opts)
    if difference:
        color = _difference_colour(ctx, color)
    files = render_attention(store, pick, color, out=out, tokens=tokens, feature=feature, query=_point(query),
                             scale=scale, heads=heads or "", average=head_average, aggregate=aggregate,
                             plain=plain_grid, progress=not quiet, jobs=jobs, **difference)
    _echo_written(files, out, "PNG file", as_json, quiet)


@click.command()
@_STORES_OR_DIFFERENCE
@storage_options
@with_options(_options("word", "merge", "query", "pair_difference"))
@with_options(value_options(Pick, skip=("channels", "which"), aliases=_LAYERS))
@with_options(_options("colormap", "alpha", "plain_overlay", "jobs", *_WRITTEN))
def heatmap(stores: tuple[StoreRun, ...], word: str | None, merge: bool, query: str | None,
            pair_difference: str | None, colormap: str, alpha: float, plain_overlay: bool, jobs: int | None,
            out: Path, quiet: bool, as_json: bool, **opts: Any) -> None:
    """Overlay where a word acts (or where a pixel looks) on the final image, DAAM-style.

    Each PNG has the word in a title strip and a colour bar (the summed attention's range);
    beside it the map in [0, 1] as float32 .npy of the same name. A --query map marks the
    query pixel with a cross-hair. An image under 32 pixels on a side is enlarged as attention
    grids enlarge their tiles (8 px: 4 times). --plain: the bare overlay, at the image's size.
    On a pair or sweep store a line on stderr names the run and prompt used (--run picks one);
    the manifest records both.

    The difference of two runs (--pair: layered - base of that pair; two stores: STORE - BASE,
    runs as for attention): the summed attention of each run (each finds the word in its own
    prompt) subtracted, not normalized, over the first run's final image in diff's colours
    (blue-white-red over [-m, m], white = no change; no --colormap); files start with diff-,
    the .npy holds the difference.

    \b
    dumpunet heatmap girl.zarr --word hair --out heat/
    dumpunet heatmap girl.zarr --word pink,hair --colormap viridis --out heat/
    dumpunet heatmap girl.zarr --query 0.5,0.3 --layers OUT09-OUT11 --out heat/
    dumpunet heatmap pair.zarr --pair layered --word girl --out heat-diff/
    """
    from dumpunet.analyzer.heatmap import run_note, write_heatmaps
    from dumpunet.store import open_store

    if (word is None) == (query is None):
        raise click.UsageError("give exactly one of --word and --query")
    if merge and word is None:
        raise click.UsageError("--merge sums the heatmaps of several --word")
    place, pick, difference = _difference(stores, take(Pick, opts), pair_difference, "heatmap")
    st = open_store(place)
    note = None if difference else run_note(st, pick)
    if note and not quiet:
        click.echo(note, err=True)
    files = write_heatmaps(st, pick, out=out, word=word, query=_point(query), alpha=alpha,
                           merge=merge, colormap=colormap, plain=plain_overlay, jobs=jobs, **difference)
    _echo_written(files, out, "file", as_json, quiet)


COMMANDS = [render, export, diff, attention, heatmap]

"""The ``dumpunet`` command line. Each command parses, calls one library function, prints.

torch and diffusers are imported inside the recording commands only, so the analysis commands
(and every ``--help``) start fast on a machine without them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from dumpunet._version import __version__
from dumpunet.errors import DumpUnetError
from dumpunet.layouts import BUILTIN_LAYOUTS


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


def _sigterm_as_interrupt() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# ----------------------------------------------------------------------------- record


_GENERATION_OPTIONS = [
    click.option("--model", default="tiny-sd1", show_default=True,
                  help="tiny-sd1, tiny-sdxl, a diffusers folder, a .safetensors/.ckpt file, or a hub id (online)."),
    click.option("--config", type=click.Path(path_type=Path), default=None,
                  help="Single-file checkpoints: a local diffusers folder with the matching configs (needed offline)."),
    click.option("--prompt", default="", help="Prompt text."),
    click.option("--negative-prompt", default="", help="Negative prompt (the unconditional half of cfg)."),
    click.option("--steps", default=20, show_default=True, type=int, help="Sampling steps."),
    click.option("--sampler", default="Euler a", show_default=True, help="A1111 sampler name, e.g. 'DPM++ 2M Karras'."),
    click.option("--cfg", default=7.0, show_default=True, type=float, help="Classifier-free guidance scale (<= 1 turns it off)."),
    click.option("--seed", default=-1, show_default=True, type=int, help="Seed; image i of a batch uses seed+i; -1 = random."),
    click.option("--width", type=int, default=None, help="Image width (default: the model's)."),
    click.option("--height", type=int, default=None, help="Image height (default: the model's)."),
    click.option("--batch-size", default=1, show_default=True, type=int, help="Images per run."),
    click.option("--record-steps", default="", help="Steps to record, e.g. '1,5,10' or '1-20(+5)'; empty = all."),
    click.option("--inputs", is_flag=True, help="Also record each block's input."),
    click.option("--dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True, help="Stored activation dtype."),
    click.option("--device", default=None, help="torch device (default: cuda if available, else cpu)."),
    click.option("--init-image", type=click.Path(path_type=Path), default=None, help="img2img: start from this image."),
    click.option("--strength", default=0.6, show_default=True, type=float, help="img2img strength."),
    click.option("--attention", default="qk", show_default=True,
                  help="Cross-attention features to record: qk (probabilities), k, vqk, comma-separated, or none."),
    click.option("--attention-blocks", default="", help="Blocks whose cross-attention is recorded; empty = all."),
    click.option("--self-attention", is_flag=True, help="Also record self-attention maps (large: see the filters)."),
    click.option("--self-attention-blocks", default="", help="Blocks whose self-attention is recorded; empty = all."),
    click.option("--self-attention-steps", default="", help="Steps at which self-attention is recorded; empty = all."),
    click.option("--self-attention-heads", type=click.Choice(["all", "mean"]), default="all", show_default=True,
                  help="Store every head, or their mean."),
    click.option("--query-region", default=None, help="Self-attention: only queries in x0,y0,x1,y1 (fractions of the image)."),
    click.option("--query-stride", default=1, show_default=True, type=int, help="Self-attention: every Nth query row and column."),
    click.option("--max-bytes", type=int, default=None, help="Refuse to record more than this (default: the free disk space)."),
    click.option("--out", required=True, type=click.Path(path_type=Path), help="Store to create (a directory)."),
    click.option("--overwrite", is_flag=True, help="Replace an existing dumpunet store at --out."),
    click.option("--dry-run", is_flag=True, help="Print the size estimate and exit."),
    click.option("--quiet", is_flag=True, help="No progress bar."),
]
"""Options shared by record and sweep: model, sampling, what to record, where to write."""


def _with(options: list[Any]) -> Any:
    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


@main.command()
@_with(_GENERATION_OPTIONS)
@click.option("--blocks", default="", help="Blocks to record, e.g. 'IN00-OUT11(+2)'; empty = all; none = attention only.")
@click.option("--pair", is_flag=True, help="Record a base run and a layered run (per-block prompts) into one store.")
@click.option("--base", default=None, help="With --pair: the base prompt (default: the prompt with every (~: :~) group erased).")
def record(**opts: Any) -> None:
    """Generate one image while recording U-Net blocks and attention into a zarr store.

    Per-block prompts: 'a (~: IN00-OUT11: cute; M00: excellent :~) girl' (see dumpunet explain).

    \b
    dumpunet record --prompt "a cute girl, pink hair" --steps 20 \\
        --sampler "DPM++ 2M Karras" --cfg 7 --seed 1719471015 --blocks IN00-OUT11 --out girl.zarr
    """
    _record(opts)


@main.command()
@_with(_GENERATION_OPTIONS)
@click.option("--insert", required=True, help="Text inserted into one block at a time, e.g. 'bad anatomy'.")
@click.option("--blocks", default="", help="Blocks to insert it into, one run each; empty = all.")
@click.option("--record-blocks", default="", help="Blocks recorded in every run; empty = all.")
def sweep(**opts: Any) -> None:
    """Record a base run and one run per block with TEXT inserted only there, paired in one store.

    Run BLOCK uses '<prompt>, (~:BLOCK:<insert>:~)'; the base run gets '<prompt>, ' (that
    group erased), the same seed and settings. Render the contact sheet with 'render --sweep'
    and the differences with 'diff --pair BLOCK'.

    \b
    dumpunet sweep --prompt "a cute school girl, pink hair, wide shot" \\
        --insert "bad anatomy" --blocks IN00-OUT11 --out sweep.zarr
    """
    opts["sweep_insert"] = opts.pop("insert")
    opts["sweep_blocks"] = opts.pop("blocks")
    opts["blocks"] = opts.pop("record_blocks")
    _record(opts)


def _record(opts: dict[str, Any]) -> None:
    _quiet_libraries()
    from dumpunet.recorder import job as recording

    dry_run = opts.pop("dry_run")
    req = recording.RecordRequest(**opts)
    job = recording.prepare(req)
    for text in {req.prompt, req.negative_prompt}:
        warning = recording.truncation_warning(job.pipe, text)
        if warning:
            click.echo(warning, err=True)
    est = recording.estimate(job)
    for line in est.lines():
        click.echo(line, err=True)
    if dry_run:
        return
    recording.check_budget(req, est)
    _sigterm_as_interrupt()
    try:
        summary = recording.execute(job)
    except KeyboardInterrupt:
        raise click.ClickException(_interrupted_message(req.out)) from None
    what = f"runs {', '.join(summary.runs)}" if len(summary.runs) > 1 else f"{summary.steps} steps"
    click.echo(f"recorded {summary.calls} U-Net calls ({what}, seed {summary.seed}) into {summary.out}", err=True)


def _interrupted_message(out: Path) -> str:
    from dumpunet.store import open_store
    from dumpunet.specs import format_ints

    try:
        steps = format_ints(open_store(out).steps)
    except DumpUnetError:
        steps = ""
    return f"interrupted; complete steps ({steps or 'none'}) stay readable in {out}"


# ----------------------------------------------------------------------------- info / validate


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(store: Path, as_json: bool) -> None:
    """Show what a store holds: model, parameters, blocks, shapes, steps, size.

    \b
    dumpunet info girl.zarr
    """
    from dumpunet.store.summary import describe, summarize

    summary = summarize(store)
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else describe(summary))


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--quick", is_flag=True, help="Skip the byte-size check of every chunk file (existence is still checked).")
def validate(store: Path, quick: bool) -> None:
    """Check a store; exit 0 if it is sound, else list what is wrong and exit 1.

    \b
    dumpunet validate girl.zarr
    """
    from dumpunet.store.validate import validate as check

    report = check(store, quick=quick)
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    if not report.ok:
        raise click.ClickException(f"{store} is not sound ({len(report.problems)} problem(s))")
    click.echo(f"{store}: ok")


# ----------------------------------------------------------------------------- explain


@main.command()
@click.argument("prompt")
@click.option("--negative", default="", help="Negative prompt; it may hold groups too.")
@click.option("--model", type=click.Choice(list(BUILTIN_LAYOUTS)), default="sd1", show_default=True,
              help="Built-in block layout: sd1/sd2/tiny-sd1 (25 blocks) or sdxl/tiny-sdxl (19 blocks).")
@click.option("--store", "store_path", type=click.Path(path_type=Path), default=None,
              help="Use this recorded store's block table instead of --model.")
@click.option("--json", "as_json", is_flag=True, help='Print {"positive": {block: prompt}, "negative": {...}}.')
@click.pass_context
def explain(ctx: click.Context, prompt: str, negative: str, model: str, store_path: Path | None, as_json: bool) -> None:
    """Show the prompt every block gets from a per-block prompt, before any GPU time is spent.

    \b
    dumpunet explain "a (~: IN00-OUT11: cute; M00: excellent :~) girl"
    """
    from dumpunet.layouts import BlockLayout, builtin_layout
    from dumpunet.prompts import explain as explain_prompts

    if store_path is None:
        layout = builtin_layout(model)
    elif ctx.get_parameter_source("model") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("give --model or --store, not both")
    else:
        from dumpunet.store import open_store

        layout = BlockLayout.from_block_table(str(store_path), open_store(store_path).block_table)
    result = explain_prompts(prompt, negative, layout=layout)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps({"positive": result.positive, "negative": result.negative}, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(result.lines()))

# ----------------------------------------------------------------------------- render / export

_SELECTION_OPTIONS = [
    click.option("--blocks", default="", help="Blocks, e.g. 'IN00-OUT11(+2)'; empty = every recorded block."),
    click.option("--steps", default="", help="Steps, e.g. '1,5,10' or '1-20(+5)'; empty = every complete step."),
    click.option("--images", default="", help="Images of the batch, e.g. '0' or '0-3'; empty = all."),
    click.option("--guidance", type=click.Choice(["cond", "uncond", "both"]), default="cond", show_default=True,
                 help="Which half of classifier-free guidance."),
    click.option("--channels", default="", help="Channels, e.g. '0-15'; empty = all."),
    click.option("--input", "inputs", is_flag=True, help="Block inputs (recorded with --inputs) instead of outputs."),
    click.option("--run", default=None, help="Run of the store (default: main, or layered of a pair)."),
]


def _color_options(*, pca: bool = False, h: str = "(2+v)/3", transform: str = "auto01") -> list[Any]:
    """The colorization options every rendering command shares (the ColorSpec fields)."""
    methods = ["White/Black", "Red/Blue", "Custom", *(["PCA"] if pca else [])]
    return [
        click.option("--method", type=click.Choice(methods, case_sensitive=False), default="Custom", show_default=True,
                     help="Colorization" + ("; PCA colours the top 3 principal components." if pca else ".")),
        click.option("--transform", type=click.Choice(["auto01", "auto11", "linear", "sigmoid", "Auto [0,1]", "Auto [-1,1]"],
                     case_sensitive=False), default=transform, show_default=True, help="Value transform."),
        click.option("--auto-scope", type=click.Choice(["channel", "block", "step", "run"]), default="channel",
                     show_default=True, help="What one Auto min/max spans: each tile, a grid, all blocks of a step, the run."),
        click.option("--clamp-min", type=float, default=-1.0, show_default=True, help="Linear: lower clamp."),
        click.option("--clamp-max", type=float, default=1.0, show_default=True, help="Linear: upper clamp."),
        click.option("--gain", type=float, default=1.0, show_default=True, help="Sigmoid gain."),
        click.option("--offset", type=float, default=0.0, show_default=True, help="Sigmoid x-offset."),
        click.option("--space", type=click.Choice(["rgb", "hsl"], case_sensitive=False), default="hsl", show_default=True,
                     help="Custom: colour space of the three expressions."),
        click.option("--r", default="abs(v)", show_default=True, help="Custom RGB: red expression in v."),
        click.option("--g", default="abs(v)", show_default=True, help="Custom RGB: green expression in v."),
        click.option("--b", default="abs(v)", show_default=True, help="Custom RGB: blue expression in v."),
        click.option("--h", default=h, show_default=True, help="Custom HSL: hue expression in v."),
        click.option("--s", default="1.0", show_default=True, help="Custom HSL: saturation expression in v."),
        click.option("--l", default="0.5", show_default=True, help="Custom HSL: lightness expression in v."),
    ]


_JOBS_OPTION = [
    click.option("--jobs", type=click.IntRange(min=1), default=None,
                 help="Worker threads reading, colouring and encoding (default: all CPUs)."),
]
_WRITTEN_OPTIONS = [
    click.option("--quiet", is_flag=True, help="No progress bar."),
    click.option("--json", "as_json", is_flag=True, help="Print the manifest entries of the written files as JSON."),
]
"""Options of every command that writes files with a manifest (see _echo_written)."""


def _echo_written(files: list[Any], out: Path, noun: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([f.params for f in files], indent=1))
    else:
        plural = "" if len(files) == 1 else "s"
        click.echo(f"wrote {len(files)} {noun}{plural} to {out} (parameters in manifest.json)", err=True)


@main.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@_with(_SELECTION_OPTIONS)
@click.option("--scale", type=click.IntRange(min=1), default=1, show_default=True, help="Enlarge each tile N times.")
@click.option("--average", type=click.Choice(["mean", "1-norm", "2-norm", "l1", "l2"], case_sensitive=False), default=None,
              help="One channel-averaged map per block instead of the grid (1-norm, 2-norm: divided by the channel count, as in the original; l1, l2: not).")
@_with(_color_options(pca=True))
@click.option("--pca-basis", type=click.Path(path_type=Path), default=None,
              help="PCA basis file (.npz): reused if it exists, else fitted here and saved.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (several stores: one subfolder each).")
@_with(_JOBS_OPTION + _WRITTEN_OPTIONS)
@click.option("--sweep", is_flag=True, help="Instead: a contact sheet of a sweep store's final images, "
              "base first, one per block, labelled (sweep-img<i>.png); takes only --images.")
@click.pass_context
def render(ctx: click.Context, stores: tuple[Path, ...], inputs: bool, quiet: bool, as_json: bool, sweep: bool,
           **opts: Any) -> None:
    """Render block outputs as PNG grids (one tile per channel) plus a manifest.json.

    \b
    dumpunet render girl.zarr --blocks OUT11 --steps 20 --method "White/Black" \\
        --transform sigmoid --gain 1 --offset 0 --out renders/
    dumpunet render sweep.zarr --sweep --out sheet/
    """
    from dumpunet.analyzer.render import render as render_stores

    _sigterm_as_interrupt()  # so a killed render removes its temporary files and writes its manifest
    if sweep:
        _contact_sheets(ctx, stores, opts["images"], opts["out"], as_json)
        return
    files = render_stores(list(stores), which="input" if inputs else "output", progress=not quiet, **opts)
    _echo_written(files, opts["out"], "PNG file", as_json)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@_with(_SELECTION_OPTIONS)
@click.option("--format", "fmt", type=click.Choice(["bin", "npy", "safetensors"]), default="bin", show_default=True,
              help="bin: one float32 file per channel (the original's dump); npy/safetensors: one per block and step.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@_with(_WRITTEN_OPTIONS)
def export(store: Path, inputs: bool, fmt: str, quiet: bool, as_json: bool, **opts: Any) -> None:
    """Export raw feature values as .bin (float32 per channel), .npy or .safetensors files.

    \b
    dumpunet export girl.zarr --blocks OUT11 --steps 20 --format bin --out dump/
    """
    from dumpunet.analyzer.export import export as export_store

    _sigterm_as_interrupt()
    files = export_store(store, which="input" if inputs else "output", format=fmt, progress=not quiet, **opts)
    _echo_written(files, opts["out"], "file", as_json)


_SWEEP_PARAMS = ("stores", "sweep", "images", "out", "quiet", "as_json", "jobs")


def _contact_sheets(ctx: click.Context, stores: tuple[Path, ...], images: str, out: Path, as_json: bool) -> None:
    from dumpunet.analyzer.sweep import contact_sheet

    given = [p.opts[0] for p in ctx.command.params if p.name not in _SWEEP_PARAMS
             and ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--sweep lays out final images; it takes only --images, not {', '.join(given)}")
    if len(stores) != 1:
        raise click.UsageError(f"--sweep takes one store, got {len(stores)}")
    files = contact_sheet(stores[0], out=out, images=images)
    _echo_written(files, out, "contact sheet", as_json)


_PAIR_SELECTION_OPTIONS = _SELECTION_OPTIONS[:-1]
"""The selection options but --run: a diff reads both runs of its pair."""


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--pair", default=None, help="The pair to compare, by label (a sweep: the block name); "
              "default: the only or first pair.")
@_with(_PAIR_SELECTION_OPTIONS)
@click.option("--scale", type=click.IntRange(min=1), default=1, show_default=True, help="Enlarge each tile N times.")
@click.option("--average", type=click.Choice(["mean", "1-norm", "2-norm", "l1", "l2"], case_sensitive=False), default=None,
              help="One channel-averaged difference map per block instead of the grid (1-norm, 2-norm: divided by the channel count; l1, l2: not).")
@_with(_color_options(pca=True, transform="linear"))
@click.option("--pca-basis", type=click.Path(path_type=Path), default=None,
              help="PCA basis file (.npz) for differences: reused if it exists, else fitted here and saved.")
@click.option("--no-finals", "finals", flag_value=False, default=True,
              help="Skip the final images (for runs that did not finish).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (one per pair).")
@_with(_JOBS_OPTION + _WRITTEN_OPTIONS)
def diff(store: Path, inputs: bool, quiet: bool, as_json: bool, **opts: Any) -> None:
    """Show what a per-block prompt changed: layered - base of a pair, per block and step.

    Writes difference maps diff-<block>-step<NNN>-img<i>-<guidance>-...png (coloured like
    render; the default Linear transform keeps 0 at the middle colour, Red/Blue: black), and
    summary.csv / summary.png: mean |layered - base| / mean |base| per block and step, to see
    at a glance which blocks and steps changed most. Beside them the final images of both runs
    and their pixel difference: final-base-, final-layered-, final-diff-, final-diff-norm-img<i>.png
    (the last stretched so the largest difference is white).

    \b
    dumpunet diff girl.zarr --blocks IN00-OUT11 --steps 1-20 --method "Red/Blue" --out diff/
    dumpunet diff sweep.zarr --pair IN04 --average 2-norm --clamp-min -4 --clamp-max 4 --out diff-IN04/
    """
    from dumpunet.analyzer.diff import diff as diff_pair

    _sigterm_as_interrupt()
    files = diff_pair(store, which="input" if inputs else "output", progress=not quiet, **opts)
    _echo_written(files, opts["out"], "file", as_json)


# ----------------------------------------------------------------------------- attention


def _point(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        x, y = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected x,y as fractions of the image, got {value!r}") from None
    return (x, y)


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--layers", default="", help="Layers or blocks, e.g. 'IN04-OUT08' or 'M00.attn2'; empty = all recorded.")
@click.option("--steps", default="", help="Steps, e.g. '1,5,10'; empty = every complete step.")
@click.option("--tokens", default="", help="Words of the prompt and/or token indices, e.g. 'pink,hair' or '0-10'; "
              "empty = the prompt's tokens.")
@click.option("--feature", type=click.Choice(["qk", "k", "vqk"]), default="qk", show_default=True,
              help="qk: attention probabilities; k: keys; vqk: per-head output.")
@click.option("--query", default=None, help="Self-attention layers: the query pixel as x,y fractions of the image.")
@click.option("--images", default="", help="Images of the batch; empty = all.")
@click.option("--guidance", type=click.Choice(["cond", "uncond", "both"]), default="cond", show_default=True,
              help="cond: the prompt; uncond: the negative prompt, labelled with its own tokens.")
@click.option("--run", default=None, help="Run of the store (default: main, or layered of a pair).")
@click.option("--scale", type=click.IntRange(min=1), default=None, help="Enlarge each tile N times (default: to >= 32 px).")
@_with(_color_options(h="(2-2*v)/3"))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@_with(_WRITTEN_OPTIONS)
def attention(store: Path, quiet: bool, as_json: bool, query: str | None, **opts: Any) -> None:
    """Render heads x tokens grids of attention maps: which token each head looks at.

    \b
    dumpunet attention girl.zarr --layers IN04-OUT08 --steps 1,5,10 --tokens "pink,hair" --out attn/
    """
    from dumpunet.analyzer.attention_grids import render_attention
    from dumpunet.analyzer.color.colorize import ColorSpec

    color = ColorSpec(**{k: opts.pop(k) for k in _COLOR_FIELDS})
    files = render_attention(store, color=color, query=_point(query), progress=not quiet, **opts)
    _echo_written(files, opts["out"], "PNG file", as_json)


_COLOR_FIELDS = ("method", "transform", "auto_scope", "clamp_min", "clamp_max", "gain", "offset", "space",
                 "r", "g", "b", "h", "s", "l")


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--word", default=None, help="A word (or several, comma-separated) of the prompt: cross-attention heatmap.")
@click.option("--query", default=None, help="Instead of --word: x,y fractions of the image; where that pixel attends "
              "(self-attention, recorded with --self-attention).")
@click.option("--layers", default="", help="Layers or blocks to aggregate; empty = all recorded.")
@click.option("--steps", default="", help="Steps to aggregate, e.g. '1-10'; empty = every complete step.")
@click.option("--images", default="", help="Images of the batch; empty = all.")
@click.option("--guidance", type=click.Choice(["cond", "uncond"]), default="cond", show_default=True,
              help="Which half: the prompt, or the negative prompt.")
@click.option("--run", default=None, help="Run of the store (default: main, or layered of a pair).")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Opacity of the heatmap.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest entries of the written files as JSON.")
def heatmap(store: Path, word: str | None, query: str | None, as_json: bool, **opts: Any) -> None:
    """Overlay where a word acts (or where a pixel looks) on the final image, DAAM-style.

    \b
    dumpunet heatmap girl.zarr --word hair --out heat/
    dumpunet heatmap girl.zarr --query 0.5,0.3 --layers OUT09-OUT11 --out heat/
    """
    from dumpunet.analyzer.heatmap import write_heatmaps

    if (word is None) == (query is None):
        raise click.UsageError("give exactly one of --word and --query")
    files = write_heatmaps(store, word=word, query=_point(query), **opts)
    _echo_written(files, opts["out"], "PNG file", as_json)


# ----------------------------------------------------------------------------- view


@main.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--no-browser", is_flag=True, help="Do not open the default browser; just print the address.")
def view(stores: tuple[Path, ...], port: int, no_browser: bool) -> None:
    """Explore stores in the browser: blocks, steps, channels, colours, attention, pairs.

    Serves a local page on 127.0.0.1 only, for the stores named here; Ctrl-C stops it.

    \b
    dumpunet view girl.zarr
    dumpunet view girl.zarr --port 8765 --no-browser
    """
    from dumpunet.viewer.server import serve

    serve(list(stores), port=port, open_browser=not no_browser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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

from dumpunet import __version__
from dumpunet.errors import DumpUnetError


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


@main.command()
@click.option("--model", default="tiny-sd1", show_default=True,
              help="tiny-sd1, tiny-sdxl, a diffusers folder, a .safetensors/.ckpt file, or a hub id (online).")
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="Single-file checkpoints: a local diffusers folder with the matching configs (needed offline).")
@click.option("--prompt", default="", help="Prompt text.")
@click.option("--negative-prompt", default="", help="Negative prompt (the unconditional half of cfg).")
@click.option("--steps", default=20, show_default=True, type=int, help="Sampling steps.")
@click.option("--sampler", default="Euler a", show_default=True, help="A1111 sampler name, e.g. 'DPM++ 2M Karras'.")
@click.option("--cfg", default=7.0, show_default=True, type=float, help="Classifier-free guidance scale (<= 1 turns it off).")
@click.option("--seed", default=-1, show_default=True, type=int, help="Seed; image i of a batch uses seed+i; -1 = random.")
@click.option("--width", type=int, default=None, help="Image width (default: the model's).")
@click.option("--height", type=int, default=None, help="Image height (default: the model's).")
@click.option("--batch-size", default=1, show_default=True, type=int, help="Images per run.")
@click.option("--blocks", default="", help="Blocks to record, e.g. 'IN00-OUT11(+2)'; empty = all.")
@click.option("--record-steps", default="", help="Steps to record, e.g. '1,5,10' or '1-20(+5)'; empty = all.")
@click.option("--inputs", is_flag=True, help="Also record each block's input.")
@click.option("--dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True, help="Stored activation dtype.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--init-image", type=click.Path(path_type=Path), default=None, help="img2img: start from this image.")
@click.option("--strength", default=0.6, show_default=True, type=float, help="img2img strength.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Store to create (a directory).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dumpunet store at --out.")
@click.option("--dry-run", is_flag=True, help="Print the size estimate and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def record(**opts: Any) -> None:
    """Generate one image while recording U-Net blocks into a zarr store.

    \b
    dumpunet record --prompt "a cute girl, pink hair" --steps 20 \\
        --sampler "DPM++ 2M Karras" --cfg 7 --seed 1719471015 --blocks IN00-OUT11 --out girl.zarr
    """
    _quiet_libraries()
    from dumpunet.recorder import run as recording

    dry_run = opts.pop("dry_run")
    req = recording.RecordRequest(**opts)
    pipe, model_info = recording.prepare(req)
    est = recording.estimate(req, pipe)
    for line in est.lines():
        click.echo(line, err=True)
    if dry_run:
        return
    _sigterm_as_interrupt()
    try:
        summary = recording.run(req, pipe, model_info)
    except KeyboardInterrupt:
        raise click.ClickException(_interrupted_message(req.out)) from None
    click.echo(f"recorded {summary['calls']} U-Net calls ({summary['steps']} steps, seed {summary['seed']}) into {summary['out']}", err=True)


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
    from dumpunet.summary import describe, summarize

    summary = summarize(store)
    click.echo(json.dumps(summary, indent=2) if as_json else describe(summary))


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
def validate(store: Path) -> None:
    """Check a store; exit 0 if it is sound, else list what is wrong and exit 1.

    \b
    dumpunet validate girl.zarr
    """
    from dumpunet.store_schema import validate as check

    report = check(store)
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    if not report.ok:
        raise click.ClickException(f"{store} is not sound ({len(report.problems)} problem(s))")
    click.echo(f"{store}: ok")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``dumpunet stats``: summary statistics of many stores as a table, computed on dask (:mod:`dumpunet.analyzer.stats`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dumpunet.analyzer.pick import Pick
from dumpunet.cli_options import (
    JOBS,
    STORE,
    click_option,
    quiet_option,
    storage_options,
    take,
    value_options,
    with_options,
)
from dumpunet.cli_views import OPTIONS as VIEW_OPTIONS
from dumpunet.options import OptionSpec

__all__ = ["COMMANDS", "OPTIONS"]

OPTIONS = {o.name: o for o in [
    OptionSpec("layers", "Also the attention entropy of these layers (their qk), e.g. 'IN01.attn2' or 'IN04-OUT08'; "
               "empty = every recorded layer."),
    OptionSpec("scheduler", "Where dask computes: threads (this process), local (a LocalCluster of --jobs worker "
               "processes) or the address of a running dask.distributed scheduler, tcp://HOST:PORT.",
               default="threads"),
    JOBS,
    OptionSpec("format", "Table format: csv, or parquet (needs pyarrow).", default="csv", choices=("csv", "parquet")),
]}


@click.command()
@click.argument("stores", nargs=-1, required=True, type=STORE)
@storage_options
@with_options(value_options(Pick, skip=("channels",)))
@with_options([click_option(OPTIONS[name]) for name in ("layers", "scheduler", "jobs", "format")])
@with_options([click_option(VIEW_OPTIONS["out"]), quiet_option(), click_option(VIEW_OPTIONS["as_json"])])
def stats(stores: tuple[Path, ...], layers: str | None, scheduler: str, jobs: int | None, format: str,  # noqa: A002
          out: Path, quiet: bool, as_json: bool, **opts: Any) -> None:
    """Per-block, per-step statistics of many stores as a table: mean, std, abs-max, L2 norm per channel.

    With --layers, also the entropy of each attention layer's tokens per head (stats.csv,
    attention-stats.csv). Computed on dask: each chunk is read once.

    \b
    dumpunet stats runs/*.zarr --blocks OUT09-OUT11 --steps '1-20(+5)' --guidance both --out stats/
    dumpunet stats s3://lab/a.zarr s3://lab/b.zarr --blocks OUT11 --scheduler tcp://10.0.0.5:8786 --out stats/
    """
    import json

    from dumpunet.analyzer.stats import write_stats

    pick = take(Pick, opts)
    files = write_stats(list(stores), pick, out=out, layers=layers, scheduler=scheduler, jobs=jobs, format=format)
    if as_json:
        click.echo(json.dumps([f.params for f in files], indent=1))
    elif not quiet:
        click.echo(f"wrote {', '.join(Path(f).name for f in files)} to {out} "
                   f"({', '.join(str(f.params['rows']) for f in files)} rows)", err=True)


COMMANDS = [stats]

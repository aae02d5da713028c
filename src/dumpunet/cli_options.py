"""Click options generated from :class:`~dumpunet.options.OptionSpec` values, and CLI plumbing.

:func:`value_options` turns a value class's fields (``Pick``, ``ColorSpec``, ``GridStyle``) into
click options and :func:`take` turns the parsed options back into the value, so a command
neither lists the fields nor restates a default or a help text.

Examples
--------
>>> import click
>>> from dumpunet.analyzer.pick import Pick
>>> @click.command()
... @with_options(value_options(Pick, only=("blocks", "steps")))
... def show(**opts):
...     click.echo(take(Pick, opts))
>>> from click.testing import CliRunner
>>> print(CliRunner().invoke(show, ["--blocks", "OUT11"]).output.strip())
Pick(run=None, blocks='OUT11', steps='', images='', guidance='cond', channels='', which='output')
"""

from __future__ import annotations

import dataclasses
import functools
import re
import signal
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from dumpunet.errors import DumpUnetError
from dumpunet.options import OptionSpec, options_of
from dumpunet.store.location import (
    Location,
    StoreUrl,
    is_url,
    locate,
    parse_storage_options,
)

__all__ = [
    "AS_JSON", "JOBS", "PATH", "QUIET", "STORE", "STORE_RUN", "StoreRun", "NonEmptyPath", "RenamedOption", "StorePlace", "click_option",
    "jobs_option", "json_option", "json_spec", "quiet_option", "renamed", "sigterm_as_interrupt", "storage_options", "take",
    "take_renamed", "value_options", "with_options",
]

Decorator = Callable[[Any], Any]


class NonEmptyPath(click.Path):
    """A path option that refuses the empty path: ``Path("")`` is the current folder, never what was meant."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path names no file or folder; give a name", param, ctx)
        return super().convert(value, param, ctx)


PATH = NonEmptyPath(path_type=Path)
"""The type of every path option."""


class StorePlace(NonEmptyPath):
    """A store argument: a local path, or a URL (``s3://``, ``gs://``, ``https://``) as a :class:`StoreUrl`."""

    name = "path_or_url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, StoreUrl):
            return value
        if isinstance(value, str) and is_url(value):
            try:
                return locate(value)
            except DumpUnetError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


STORE = StorePlace(path_type=Path)
"""The type of every store argument (and of ``record --out``): a folder or a URL."""


@dataclasses.dataclass(frozen=True)
class StoreRun:
    """A store argument that may name one of its runs: ``girl.zarr:p0001``, ``s3://lab/girl.zarr:base``."""

    place: Path | StoreUrl
    run: str | None = None


_RUN_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def split_run(text: str) -> tuple[str, str | None]:
    """``STORE[:RUN]`` as the store's path or URL and the run (``None``: none named).

    A colon inside a URL's host part (``https://host:8080/x.zarr``) or an existing path with a
    colon in its name is not a run.

    >>> split_run("girl.zarr:p0001"), split_run("s3://lab/girl.zarr"), split_run("s3://lab/a.zarr:base")
    (('girl.zarr', 'p0001'), ('s3://lab/girl.zarr', None), ('s3://lab/a.zarr', 'base'))
    >>> split_run("https://host:8080/a.zarr"), split_run("https://host:8080")
    (('https://host:8080/a.zarr', None), ('https://host:8080', None))
    """
    head, sep, tail = text.rpartition(":")
    if not sep or not head or not _RUN_NAME.fullmatch(tail) or Path(text).exists():
        return text, None
    if is_url(head) and "/" not in head.split("://", 1)[1]:
        return text, None
    return head, tail


class StoreRunPlace(StorePlace):
    """A ``STORE[:RUN]`` argument: a :class:`StoreRun`."""

    name = "store[:run]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, StoreRun):
            return value
        place, run = split_run(str(value))
        return StoreRun(super().convert(place, param, ctx), run)


STORE_RUN = StoreRunPlace(path_type=Path)
"""The type of store arguments that may name a run (``diff A[:RUN] B[:RUN]``)."""


def _with_storage_options(value: Any, options: Mapping[str, Any]) -> tuple[Any, int]:
    """``value`` with ``options`` given to each URL it holds, and how many URLs it holds."""
    if isinstance(value, StoreUrl):
        return value.with_options(options), 1
    if isinstance(value, StoreRun) and isinstance(value.place, StoreUrl):
        return StoreRun(value.place.with_options(options), value.run), 1
    if isinstance(value, tuple):
        parts = [_with_storage_options(v, options) for v in value]
        return tuple(v for v, _ in parts), sum(n for _, n in parts)
    return value, 0


def storage_options(f: Any) -> Any:
    """Add ``--storage-option KEY=VALUE`` (repeatable) to a command and give the options to its URL arguments.

    Every command that reads or writes stores takes it; each :class:`StoreUrl` argument the command
    gets (alone or in a tuple) carries the options, so the library opens it with them.
    """

    @functools.wraps(f)
    def command(*args: Any, storage_option: tuple[str, ...] = (), **kwargs: Any) -> Any:
        try:
            options = parse_storage_options(storage_option)
        except DumpUnetError as exc:
            raise click.BadParameter(str(exc), param_hint="--storage-option") from None
        if options:
            urls = 0
            for key, value in kwargs.items():
                kwargs[key], n = _with_storage_options(value, options)
                urls += n
            if not urls:
                raise click.UsageError("--storage-option is for stores given as URLs (s3://..., gs://...), and none is")
        return f(*args, **kwargs)

    return click.option("--storage-option", multiple=True, metavar="KEY=VALUE",
                        help="An option of the URL's storage, in fsspec/s3fs names (e.g. endpoint_url=http://..., "
                             "anon=true; translated for s3:// and gs://, which obstore opens); repeatable; JSON values "
                             "are parsed. Credentials also come from the usual environment variables.")(command)


class AliasChoice(click.Choice):  # type: ignore[type-arg]
    """A choice that ``--help`` lists once per meaning, and that also accepts further spellings.

    ``aliases`` maps each extra spelling (compared without case and whitespace) to its choice:
    ``--transform "Auto [0,1]"`` reads as ``auto01`` while the list shows ``auto01`` alone.
    """

    def __init__(self, choices: Iterable[str], aliases: Mapping[str, str], case_sensitive: bool = True) -> None:
        super().__init__(list(choices), case_sensitive=case_sensitive)
        self.aliases = {"".join(k.lower().split()): v for k, v in aliases.items()}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        alias = self.aliases.get("".join(value.lower().split())) if isinstance(value, str) else None
        if alias is not None and alias in self.choices:
            value = alias
        return super().convert(value, param, ctx)


def click_option(spec: OptionSpec, *, aliases: Iterable[str] = ()) -> Decorator:
    """The click option of ``spec`` (``aliases``: further spellings, e.g. ``--layers``)."""
    decls = [spec.cli, *aliases, spec.name]
    kw: dict[str, Any] = {"help": spec.help, "default": spec.default, "required": spec.required}
    if spec.flag_value is not None:
        return click.option(*decls, flag_value=spec.flag_value, **kw)
    if spec.choices is not None:
        kw["type"] = AliasChoice(spec.choices, dict(spec.choice_aliases), case_sensitive=spec.case_sensitive)
    elif spec.minimum is not None or spec.maximum is not None:
        ranges = {int: click.IntRange, float: click.FloatRange}[spec.type]
        kw["type"] = ranges(min=spec.minimum, max=spec.maximum)
    elif spec.type is Path:
        kw["type"] = PATH
    elif spec.type is Location:
        kw["type"] = STORE
    else:
        kw["type"] = spec.type
    kw["show_default"] = spec.default not in (None, "") and not spec.required
    if kw["show_default"] and spec.choices is not None and not spec.case_sensitive:
        kw["default"] = str(spec.default).lower()  # as click lists case-insensitive choices
    return click.option(*decls, **kw)


def value_options(
    cls: type,
    *,
    defaults: Any = None,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    aliases: Mapping[str, Iterable[str]] | None = None,
    choices: Mapping[str, tuple[str, ...]] | None = None,
) -> list[Decorator]:
    """The click options of a value class's fields (defaults from the instance ``defaults`` if given)."""
    keep = set(only) if only is not None else None
    out = []
    for spec in options_of(cls, defaults=defaults):
        if spec.name in skip or (keep is not None and spec.name not in keep):
            continue
        if choices and spec.name in choices:
            spec = dataclasses.replace(spec, choices=choices[spec.name])
        out.append(click_option(spec, aliases=(aliases or {}).get(spec.name, ())))
    return out


def take(cls: type, opts: dict[str, Any]) -> Any:
    """Pop the fields of value class ``cls`` that the command parsed from ``opts``; build the value."""
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name in opts]
    return cls(**{name: opts.pop(name) for name in names})


def with_options(options: Iterable[Decorator]) -> Decorator:
    """Apply click options in the order given (the order ``--help`` lists them)."""
    options = list(options)

    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


class RenamedOption(click.Option):
    """The old spelling of a renamed option: hidden from ``--help``, still read for one minor version.

    :func:`take_renamed` moves its value to the new option and prints one deprecation line.
    """

    def __init__(self, *args: Any, new_flag: str, new_name: str, note: str = "", **kw: Any) -> None:
        super().__init__(*args, hidden=True, **kw)
        self.new_flag, self.new_name, self.note = new_flag, new_name, note


def renamed(old: str, new_flag: str, new_name: str, *, note: str = "", **kw: Any) -> Decorator:
    """A hidden option ``old`` that stands for ``new_flag`` (parameter ``new_name``), with a deprecation line.

    ``kw`` are click's (``type=int``); the default is always None (not given).
    """
    dest = "renamed_" + old.lstrip("-").replace("-", "_")
    return click.option(old, dest, cls=RenamedOption, new_flag=new_flag, new_name=new_name, note=note,
                        default=None, **kw)


def take_renamed(ctx: click.Context, opts: dict[str, Any]) -> None:
    """Move each old spelling's value in ``opts`` to its new name, with one line on stderr; refuse both at once."""
    for param in ctx.command.params:
        if not isinstance(param, RenamedOption):
            continue
        value = opts.pop(param.name, None)  # type: ignore[arg-type]
        if value is None:
            continue
        old = param.opts[0]
        if ctx.get_parameter_source(param.new_name) is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{old} is the old spelling of {param.new_flag}; give {param.new_flag} only")
        click.echo(f"warning: {ctx.info_name} {old} is deprecated and goes in dumpunet 0.3: write {param.new_flag}"
                   f"{param.note}", err=True)
        opts[param.new_name] = value


# The vocabulary every command shares: a command that writes files or takes long has --quiet and
# --json, one that can spread its work over CPUs has --jobs, each spelt and explained once here
# (tests/test_cli_vocabulary.py walks the command tree and holds every command to it).

QUIET = OptionSpec("quiet", "No progress bar and no chatter on stderr (estimates, notes, the closing summary line); "
                   "warnings and errors still show.", default=False, flag_value=True)
"""``--quiet``: the same switch and help on every command that writes files or takes long."""

JOBS = OptionSpec("jobs", "Workers at once: threads reading, computing and writing files, or worker processes where the "
                  "work runs on a dask LocalCluster (default: all CPUs this process may use).", type=int, minimum=1)
"""``--jobs``: the worker count of :func:`~dumpunet.analyzer.pool.run_parallel` (or of a dask LocalCluster)."""

AS_JSON = OptionSpec("as_json", "Print JSON on stdout: {what}.", default=False, flag_value=True, flag="--json")
"""``--json``: its help names what the command prints (:func:`json_option` fills ``{what}``)."""


def quiet_option() -> Decorator:
    """``--quiet`` (:data:`QUIET`); the command gets ``quiet``."""
    return click_option(QUIET)


def jobs_option() -> Decorator:
    """``--jobs N`` (:data:`JOBS`); the command gets ``jobs`` (None: every CPU)."""
    return click_option(JOBS)


def json_spec(what: str) -> OptionSpec:
    """:data:`AS_JSON` with its help saying ``what`` the command prints."""
    return dataclasses.replace(AS_JSON, help=AS_JSON.help.format(what=what))


def json_option(what: str) -> Decorator:
    """``--json`` (:func:`json_spec`); the command gets ``as_json``."""
    return click_option(json_spec(what))


def sigterm_as_interrupt() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so a killed command cleans up as for Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)

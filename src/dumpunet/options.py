"""What an option is called, what it defaults to and what it means, stated once.

The analysis values (:class:`~dumpunet.analyzer.pick.Pick`,
:class:`~dumpunet.analyzer.color.spec.ColorSpec`) carry an :class:`OptionSpec` in each field's
metadata (:func:`option`); the field's default is the option's default. :func:`options_of` reads
them back, and the command line generates its click options from what it returns, so the
Python API and every command spell, default and explain an option the same way. This module
imports nothing heavier than :mod:`dataclasses`.

Examples
--------
>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Look:
...     scale: int = field(default=1, metadata=option("Enlarge each tile N times.", type=int, minimum=1))
>>> [(o.cli, o.default, o.help) for o in options_of(Look)]
[('--scale', 1, 'Enlarge each tile N times.')]
>>> options_of(Look, defaults=Look(scale=2))[0].default
2
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["OptionSpec", "option", "options_of"]


@dataclass(frozen=True)
class OptionSpec:
    """One option: its Python name, default, help text and the constraints the CLI enforces.

    ``flag`` is the command-line spelling (default ``--`` + the name with dashes); with
    ``flag_value`` the option is a switch that sets the value (``--input`` sets
    ``which="input"``). ``choice_aliases``: further accepted spellings of choices, as
    ``(spelling, choice)`` pairs, that ``--help`` does not list (each choice is listed once).
    """

    name: str
    help: str
    default: Any = None
    type: type = str
    choices: tuple[str, ...] | None = None
    case_sensitive: bool = True
    minimum: float | None = None
    maximum: float | None = None
    flag: str | None = None
    flag_value: Any = None
    required: bool = False
    choice_aliases: tuple[tuple[str, str], ...] = ()

    @property
    def cli(self) -> str:
        """The command-line spelling: ``--clamp-min`` for ``clamp_min``."""
        return self.flag or "--" + self.name.replace("_", "-")

    def with_default(self, default: Any) -> OptionSpec:
        return dataclasses.replace(self, default=default)


def option(help: str, **kw: Any) -> dict[str, dict[str, Any]]:  # noqa: A002 - click's word
    """Field metadata declaring the field an option (keywords as :class:`OptionSpec`'s)."""
    return {"option": {"help": help, **kw}}


def options_of(cls: type, *, defaults: Any = None) -> list[OptionSpec]:
    """The options of a dataclass, in field order; defaults from ``defaults`` (an instance) if given."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        default = getattr(defaults, f.name) if defaults is not None else f.default
        out.append(OptionSpec(f.name, default=default, **meta))
    return out

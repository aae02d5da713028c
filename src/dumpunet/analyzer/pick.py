"""What to read from a store: the :class:`Pick` value every analysis command takes.

A pick names one run and, by spec, its blocks (or attention layers), steps, images, guidance
halves and channels, and whether block outputs or inputs. Empty specs select everything. Each
field is also a command-line option (:mod:`dumpunet.options`): ``--run``, ``--blocks``,
``--steps``, ``--images``, ``--guidance``, ``--channels`` and the ``--input`` switch are
generated from the fields below, so every command spells them the same way.

A pick is checked against a store where it is used (:func:`~dumpunet.analyzer.selection.select`);
here only its form is checked.

Examples
--------
>>> Pick(blocks="OUT11", steps="20")
Pick(run=None, blocks='OUT11', steps='20', images='', guidance='cond', channels='', which='output')
>>> Pick(guidance="all")
Traceback (most recent call last):
...
dumpunet.errors.OptionError: unknown guidance 'all' (valid: cond, uncond, both)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from dumpunet.errors import OptionError
from dumpunet.options import option

__all__ = ["GUIDANCE", "WHICH", "Pick"]

GUIDANCE = ("cond", "uncond", "both")
WHICH = ("output", "input")


@dataclass(frozen=True, kw_only=True)
class Pick:
    """What to read: one run's blocks x steps x images x guidance halves x channels (see the module)."""

    run: str | None = field(default=None, metadata=option("Run of the store (default: main, or layered of a pair)."))
    blocks: str = field(default="", metadata=option(
        "Blocks, e.g. 'IN00-OUT11(+2)' (attention views: layers too, e.g. 'M00.attn2'); empty = every recorded one."))
    steps: str = field(default="", metadata=option("Steps, e.g. '1,5,10' or '1-20(+5)'; empty = every complete step."))
    images: str = field(default="", metadata=option("Images of the batch, e.g. '0' or '0-3'; empty = all."))
    guidance: str = field(default="cond", metadata=option(
        "Which half of classifier-free guidance: cond (the prompt), uncond (the negative prompt) or both.",
        choices=GUIDANCE))
    channels: str = field(default="", metadata=option("Channels, e.g. '0-15'; empty = all."))
    which: str = field(default="output", metadata=option(
        "Block inputs (recorded with --inputs) instead of outputs.", flag="--input", flag_value="input"))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) and not (f.name == "run" and value is None):
                raise OptionError(f"{f.name} must be a text spec, got {value!r}")
        if self.guidance not in GUIDANCE:
            raise OptionError(f"unknown guidance {self.guidance!r} (valid: {', '.join(GUIDANCE)})")
        if self.which not in WHICH:
            raise OptionError(f"unknown block side {self.which!r} (valid: {', '.join(WHICH)})")

    @property
    def halves(self) -> tuple[str, ...] | None:
        """The guidance halves asked for; None for "both" (every half the run recorded)."""
        return None if self.guidance == "both" else (self.guidance,)

    def refuse(self, command: str, *names: str) -> None:
        """Refuse fields that ``command`` does not use, unless they keep their defaults.

        >>> Pick(channels="0-3").refuse("attention", "channels", "which")
        Traceback (most recent call last):
        ...
        dumpunet.errors.OptionError: attention does not take channels (got '0-3')
        """
        defaults = {f.name: f.default for f in fields(self)}
        for name in names:
            value = getattr(self, name)
            if value != defaults[name]:
                raise OptionError(f"{command} does not take {name} (got {value!r})")

"""How to colour feature maps: the :class:`ColorSpec` value every drawing command takes.

Each field is also a command-line option (:mod:`dumpunet.options`): its name, default, choices
and help text are stated here once, and ``dumpunet render``, ``diff`` and ``attention`` generate
their ``--method``, ``--transform``, ... ``--l`` options from them. What the methods and
transforms compute is in :mod:`.colorize`. Two views start from other defaults, named here:
:data:`ATTENTION_COLOR` and :data:`DIFF_COLOR`.

Examples
--------
>>> ColorSpec().slug()
'hsl-auto01'
>>> ColorSpec("white/black", "Sigmoid", gain=2.0).transform
'sigmoid'
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from dumpunet.analyzer.color.expressions import Expression, parse_expression
from dumpunet.errors import ColorSpecError
from dumpunet.options import option

__all__ = ["ATTENTION_COLOR", "DIFF_COLOR", "METHODS", "PALETTES", "SCOPES", "TRANSFORMS", "ColorSpec"]

_METHODS: dict[str, str] = {
    "white/black": "White/Black",
    "black/white": "White/Black",
    "gray": "White/Black",
    "grey": "White/Black",
    "red/blue": "Red/Blue",
    "custom": "Custom",
    "pca": "PCA",
}
_TRANSFORMS: dict[str, str] = {
    "auto01": "auto01",
    "auto[0,1]": "auto01",
    "auto11": "auto11",
    "auto[-1,1]": "auto11",
    "autosym": "autosym",
    "auto[-m,m]": "autosym",
    "linear": "linear",
    "sigmoid": "sigmoid",
}
_SPACES = ("rgb", "hsl")
_SCOPES = ("channel", "head", "block", "step", "run")
_SLUGS = {"White/Black": "wb", "Red/Blue": "rb", "PCA": "pca"}
_DEFAULTS = {"r": "abs(v)", "g": "abs(v)", "b": "abs(v)", "h": "(2+v)/3", "s": "1.0", "l": "0.5"}

PALETTES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "bwr": ("rgb", ("minimum(1, 1+v)", "1-abs(v)", "minimum(1, 1-v)")),
}
_PALETTE_WORDS = {"bwr": "blue (-) white (0) red (+)"}
"""Named Custom expressions (space, the three expressions): file names say the name. ``bwr``:
blue (t = -1), white (0), red (1), diff's default."""


def _num(x: float) -> str:
    """A number as a file name writes it: the shortest text that reads back to the same float.

    >>> _num(1.0), _num(-0.0), _num(0.1), _num(1e-05)
    ('1', '0', '0.1', '1e-05')
    """
    text = repr(float(x) + 0.0)
    return text[:-2] if text.endswith(".0") else text

METHODS = ("White/Black", "Red/Blue", "Custom", "PCA")
"""The methods as the original's UI spelled them (any case is accepted)."""
TRANSFORMS = ("auto01", "auto11", "autosym", "linear", "sigmoid")
"""The transforms, each once (the original's "Auto [0,1]" and "Auto [-1,1]" are accepted spellings of
``auto01`` and ``auto11``). ``autosym`` is ours, not the original's: Auto [-1,1] over a range made
symmetric around zero, ``[-m, m]`` with ``m`` the largest ``|v|`` of the scope, so 0 is always the
middle colour."""
SCOPES = _SCOPES


def _choice(value: str, table: Mapping[str, str] | tuple[str, ...], what: str) -> str:
    key = "".join(str(value).lower().split())
    if isinstance(table, tuple):
        if key in table:
            return key
        valid = ", ".join(table)
    else:
        if key in table:
            return table[key]
        valid = ", ".join(sorted(set(table.values())))
    raise ColorSpecError(f"unknown {what} {value!r} (valid: {valid})")


def _expr(name: str, default: str, space: str, what: str) -> str:
    return field(default=default, metadata=option(f"Custom {space}: {what} expression in v.", flag=f"--{name}"))


@dataclass(frozen=True)
class ColorSpec:
    """How to colorize feature maps; the defaults are the original's UI defaults.

    ``method`` and ``transform`` accept the UI's names in any case ("White/Black",
    "Auto [0,1]", "Auto [-1,1]", "Linear", "Sigmoid") and are stored in canonical form.
    Expressions are parsed here, so a bad one fails at construction with a caret.
    ``method="PCA"`` colours each pixel by the block's top three principal components instead
    (:mod:`dumpunet.analyzer.pca`; render and diff only): the other fields then do nothing.

    >>> ColorSpec("white/black", "Sigmoid", gain=2.0).transform
    'sigmoid'
    """

    method: str = field(default="Custom", metadata=option(
        "Colorization; PCA colours the top 3 principal components (render, diff).",
        choices=METHODS, case_sensitive=False, choice_aliases=tuple(_METHODS.items())))
    transform: str = field(default="auto01", metadata=option(
        "Value transform; auto01/auto11: the original's Auto [0,1]/[-1,1]; autosym: Auto over [-m, m], m = the "
        "largest |v|, so 0 is the middle colour.",
        choices=TRANSFORMS, case_sensitive=False, choice_aliases=tuple(_TRANSFORMS.items())))
    clamp_min: float = field(default=-1.0, metadata=option("Linear: lower clamp.", type=float))
    clamp_max: float = field(default=1.0, metadata=option("Linear: upper clamp.", type=float))
    gain: float = field(default=1.0, metadata=option("Sigmoid gain.", type=float))
    offset: float = field(default=0.0, metadata=option("Sigmoid x-offset.", type=float))
    space: str = field(default="hsl", metadata=option(
        "Custom: colour space of the three expressions.", choices=_SPACES, case_sensitive=False))
    r: str = _expr("r", _DEFAULTS["r"], "RGB", "red")
    g: str = _expr("g", _DEFAULTS["g"], "RGB", "green")
    b: str = _expr("b", _DEFAULTS["b"], "RGB", "blue")
    h: str = field(default=_DEFAULTS["h"], metadata=option(
        "Custom HSL: hue expression in v. The one default of every command: blue (low) through magenta to red "
        "(high); a third of the hue circle, so it never wraps, also for t in [-1, 1] (green, blue, red).",
        flag="--h"))
    s: str = _expr("s", _DEFAULTS["s"], "HSL", "saturation")
    l: str = _expr("l", _DEFAULTS["l"], "HSL", "lightness")  # noqa: E741 (the original's name for lightness)
    auto_scope: str = field(default="channel", metadata=option(
        "What one Auto min/max spans: each tile, a head row (attention only), a grid, all blocks of a step, the run.", choices=_SCOPES))
    _exprs: dict[str, Expression] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "method", _choice(self.method, _METHODS, "colorize method"))
        set_(self, "transform", _choice(self.transform, _TRANSFORMS, "value transform"))
        set_(self, "space", _choice(self.space, _SPACES, "color space"))
        set_(self, "auto_scope", _choice(self.auto_scope, _SCOPES, "auto scope"))
        for name in ("clamp_min", "clamp_max", "gain", "offset"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ColorSpecError(f"{name} must be a finite number, got {value!r}")
            set_(self, name, float(value))
        if not self.clamp_min < self.clamp_max:
            raise ColorSpecError(f"clamp_min ({self.clamp_min}) must be less than clamp_max ({self.clamp_max})")
        exprs = {name: parse_expression(getattr(self, name), name=name.upper()) for name in "rgbhsl"}
        set_(self, "_exprs", exprs)

    @property
    def grayscale(self) -> bool:
        return self.method == "White/Black"

    @property
    def pca(self) -> bool:
        """Colour by principal components (a basis, not the transform and expressions)."""
        return self.method == "PCA"

    @property
    def scope(self) -> str:
        """Which maps share one Auto range: :attr:`auto_scope`, or ``"none"`` (no Auto transform, or PCA)."""
        return self.auto_scope if self.transform.startswith("auto") and not self.pca else "none"

    @property
    def expressions(self) -> tuple[Expression, Expression, Expression]:
        """The three Custom expressions of the chosen space: (R, G, B) or (H, S, L)."""
        names = "rgb" if self.space == "rgb" else "hsl"
        return tuple(self._exprs[n] for n in names)  # type: ignore[return-value]

    def _palette(self) -> str | None:
        """The name of the Custom expressions in :data:`PALETTES`, if they are one."""
        exprs = tuple(getattr(self, n) for n in self.space)
        return next((name for name, (space, p) in PALETTES.items() if space == self.space and exprs == p), None)

    def slug(self) -> str:
        """The colorization as a file name part: every field that changes pixels, readably.

        Method (``wb``, ``rb``, ``pca``; Custom: its space ``hsl`` or ``rgb``, or the palette's
        name, e.g. ``bwr``), then the transform with its numbers (``sigmoid-g1.5-o0``,
        ``linear-min-1-max1``) or its Auto scope where not ``channel`` (``auto01-block``).
        Custom expressions other than the defaults (or a named palette's) are written as
        :func:`~dumpunet.analyzer.output.text_part` writes free text: their characters and a
        short hash, the one place a hash is needed for distinct colorizations to keep
        distinct names. Numbers are written exactly (the shortest text that reads back to the
        same float), so two colorizations share a name only if they draw the same pixels.

        >>> ColorSpec("White/Black", "Sigmoid", gain=1.5).slug()
        'wb-sigmoid-g1.5-o0'
        >>> ColorSpec().slug(), ColorSpec(h="(2-2*v)/3").slug()
        ('hsl-auto01', 'hsl-h-2-2-v-3-fd396a-auto01')
        """
        from dumpunet.analyzer.output import text_part  # output imports nothing of the colour engine

        if self.method != "Custom":
            parts = [_SLUGS[self.method]]
        elif self._palette() is not None:
            parts = [self._palette()]
        else:
            changed = " ".join(f"{n}={getattr(self, n)}" for n in self.space if getattr(self, n) != _DEFAULTS[n])
            parts = [self.space, text_part(changed)] if changed else [self.space]
        parts.append(self.transform)
        if self.transform == "linear":
            parts += [f"min{_num(self.clamp_min)}", f"max{_num(self.clamp_max)}"]
        elif self.transform == "sigmoid":
            parts += [f"g{_num(self.gain)}", f"o{_num(self.offset)}"]
        elif self.auto_scope != "channel":
            parts.append(self.auto_scope)
        return "-".join(parts)

    def words(self) -> str:
        """The colorization in words, as a picture's title states it.

        >>> ColorSpec().words()
        'Custom HSL h=(2+v)/3 s=1.0 l=0.5, Auto [0,1] over each tile'
        >>> ColorSpec("White/Black", "sigmoid", gain=2).words()
        'White/Black, Sigmoid gain 2 offset 0'
        """
        if self.pca:
            return "PCA: top 3 principal components as RGB"
        method = self.method
        if self.method == "Custom":
            named = self._palette()
            exprs = _PALETTE_WORDS[named] if named else " ".join(f"{n}={getattr(self, n)}" for n in self.space)
            method = f"Custom {self.space.upper()} {exprs}"
        if self.transform == "linear":
            how = f"Linear clamp [{self.clamp_min:g}, {self.clamp_max:g}]"
        elif self.transform == "sigmoid":
            how = f"Sigmoid gain {self.gain:g} offset {self.offset:g}"
        else:
            over = {"channel": "each tile", "head": "each head row", "block": "the grid", "step": "the step", "run": "the run"}[self.auto_scope]
            span = {"auto01": "[0,1]", "auto11": "[-1,1]", "autosym": "[-m,m] (m = max |v|)"}[self.transform]
            how = f"Auto {span} over {over}"
        return f"{method}, {how}"

    def to_json(self) -> str:
        """All fields as a JSON object (store attributes hold this)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, data: str | Mapping[str, object]) -> ColorSpec:
        """Inverse of :meth:`to_json`; accepts the JSON text or the decoded mapping."""
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ColorSpecError(f"unknown colour spec fields {unknown} (valid: {', '.join(sorted(known))})")
        return cls(**data)  # type: ignore[arg-type]


ATTENTION_COLOR = ColorSpec(auto_scope="head")
"""Attention maps: the hue every command uses (blue = little attention, red = much), with one Auto
range per head row, so the tokens a head attends to most are the reddest. (The original extension
recommended ``(2-2*v)/3`` for attention: blue through green to red; it is one ``--h`` away, but it
wraps around the hue circle for t in [-1, 1], where -1 and 0.5 are both green.)"""

DIFF_COLOR = ColorSpec(transform="autosym", space="rgb", **dict(zip("rgb", PALETTES["bwr"][1], strict=True)),
                       auto_scope="block")
"""Difference maps: a diverging blue-white-red map over ``[-m, m]``, ``m`` the grid's largest
``|layered - base|``: no change is white in every map, the largest change full red or blue, and
the colour bar states ``m``. A map that cannot be negative (``--average`` 1-norm, 2-norm, l1,
l2) uses the white-to-red half only, and its bar runs from 0 to ``m``."""

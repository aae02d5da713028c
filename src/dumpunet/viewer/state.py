"""One view of a store as a value: parsed from (and written back to) a URL query string.

A :class:`ViewState` names everything that decides the pixels of one served image: which
store, which picture (``view``), the selection (run or pair, block, step, image, guidance half,
channel, channel subset or average) and the colorization. It is frozen and hashable, so the server caches
images by it; :meth:`ViewState.query` gives the canonical query string (defaults left out) that
the page keeps in its address bar, and :meth:`ViewState.command` the ``dumpunet`` command line
that writes the same picture to a file.

Views:

=============  ======================================================================
``grid``       a block's channel grid (``channels``: a subset, a spec as ``--channels`` takes;
               ``channel``: one channel; ``average``: one map)
``attention``  a cross-attention layer's heads x token grid at one step (``token``: one)
``heatmap``    the word heatmap of ``token`` over the final image (steps up to ``step``)
``query``      where the pixel ``qx, qy`` looks (self-attention) over the final image
``final``      the final image (of a pair with ``mode=diff``: the stretched difference)
``summary``    a pair's ``diff`` summary chart: how much each block changed, per step
               (the steps up to ``step``)
=============  ======================================================================

With ``minus`` (another store's index), every view but a pair's difference shows the difference
of two stores, ``store - minus``: the run shown minus the other store's run of the same name (or
its default run). A pair's ``mode=diff`` shows ``layered - base`` in every view (attention,
heatmaps and query maps too: :mod:`dumpunet.analyzer.attention_diff`).

Colours: a colour field left empty takes the default of the view's command
(:attr:`ViewState.default_color`), as an option not given on the command line does: a
difference's grid or attention view is drawn in ``diff``'s blue-white-red
(:data:`~dumpunet.analyzer.color.spec.DIFF_COLOR`) until a field is set, and a field set keeps
its value in every view.

Examples
--------
>>> s = ViewState.from_query({"block": "OUT11", "step": "20", "method": "Red/Blue"})
>>> s.query()
'block=OUT11&step=20&method=Red%2FBlue'
>>> s.command("girl.zarr")
'dumpunet render girl.zarr --blocks OUT11 --steps 20 --images 0 --guidance cond --method Red/Blue --transform auto01 --plain --out view'
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from urllib.parse import urlencode

from dumpunet.analyzer.color.spec import ATTENTION_COLOR, DIFF_COLOR, ColorSpec
from dumpunet.errors import SelectionError

__all__ = ["VIEWS", "ViewState"]

VIEWS = ("grid", "attention", "heatmap", "query", "final", "summary")
MODES = ("base", "layered", "diff")
AVERAGES = ("mean", "1-norm", "2-norm")
COLOR_FIELDS = ("method", "transform", "clamp_min", "clamp_max", "gain", "offset", "space",
                "r", "g", "b", "h", "s", "l", "auto_scope")
RENDER_COLOR = ColorSpec()  # render's colours: its options' defaults


@dataclass(frozen=True)
class ViewState:
    """Everything that decides one served picture; see the module for the views."""

    store: int = 0
    minus: int = -1  # another store's index: show ``store - minus``
    view: str = "grid"
    run: str = ""  # empty: the store's default run
    pair: str = ""  # a pair's label: then ``mode`` picks base, layered or their difference
    mode: str = "layered"
    block: str = ""
    which: str = "output"
    step: int = 0  # 0: the last complete step
    image: int = 0
    guidance: str = "cond"
    channel: int = -1  # -1: every channel of ``channels`` (the grid); else this one alone
    channels: str = ""  # the grid's channels, a spec as render's --channels takes it (empty: all)
    average: str = ""
    layer: str = ""  # attention: the layer shown
    layers: str = ""  # heatmap, query: the layers summed (empty: every recorded one)
    head: str = "all"  # attention: all heads as rows, "mean", or one head's index
    token: int = -1  # -1: every prompt token
    qx: float = 0.5
    qy: float = 0.5
    alpha: float = 0.5
    # Colours. An empty text field takes the view's default (:attr:`default_color`: a difference's
    # DIFF_COLOR, attention's ATTENTION_COLOR, else render's), as a command's options not given do.
    method: str = "Custom"
    transform: str = ""
    clamp_min: float = -1.0
    clamp_max: float = 1.0
    gain: float = 1.0
    offset: float = 0.0
    space: str = ""
    r: str = ""
    g: str = ""
    b: str = ""
    h: str = ""
    s: str = ""
    l: str = ""  # noqa: E741 - the original's name for lightness
    auto_scope: str = ""

    def __post_init__(self) -> None:
        _one_of(self.view, VIEWS, "view")
        _one_of(self.mode, MODES, "pair mode")
        _one_of(self.which, ("output", "input"), "block side")
        _one_of(self.guidance, ("cond", "uncond"), "guidance")
        if self.average:
            _one_of(self.average, AVERAGES, "channel average")
        if self.head not in ("all", "mean") and not self.head.isdigit():
            raise SelectionError(f"head must be all, mean or a head index, got {self.head!r}")
        if min(self.store, self.step, self.image) < 0 or min(self.channel, self.token, self.minus) < -1:
            raise SelectionError("store, step and image must be >= 0; channel, token and minus >= -1")
        if self.minus == self.store:
            raise SelectionError(f"minus names the shown store itself ({self.store}); choose another store")
        if not (0 <= self.qx <= 1 and 0 <= self.qy <= 1 and 0 <= self.alpha <= 1):
            raise SelectionError("qx, qy and alpha must lie in [0, 1]")

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> ViewState:
        """Parse query parameters (unknown names are refused, so typos do not pass silently)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, object] = {}
        for name, text in params.items():
            if name not in known:
                raise SelectionError(f"unknown view parameter {name!r} (valid: {', '.join(known)})")
            kind = type(known[name].default)
            try:
                values[name] = kind(text)
            except ValueError:
                raise SelectionError(f"view parameter {name} must be a {kind.__name__}, got {text!r}") from None
        return cls(**values)  # type: ignore[arg-type]

    def query(self) -> str:
        """The canonical query string: the fields that differ from the defaults, in field order."""
        default = ViewState()
        items = [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]
        return urlencode([(k, _text(v)) for k, v in items])

    def with_(self, **changes: object) -> ViewState:
        return replace(self, **changes)

    @property
    def default_color(self) -> ColorSpec:
        """The colours of this view's command where no option is given: a difference's
        :data:`DIFF_COLOR` (blue-white-red, white = no change), attention's :data:`ATTENTION_COLOR`,
        else render's."""
        if self.difference:
            return DIFF_COLOR
        return ATTENTION_COLOR if self.view == "attention" else RENDER_COLOR

    @property
    def color(self) -> dict[str, object]:
        """The :class:`~dumpunet.analyzer.color.colorize.ColorSpec` fields: those set, the view's defaults for the rest."""
        defaults = self.default_color
        return {name: getattr(self, name) if getattr(self, name) != "" else getattr(defaults, name)
                for name in COLOR_FIELDS}

    @property
    def channel_spec(self) -> str:
        """The channels drawn, as render's ``--channels`` spec: the one clicked, else the subset (empty: all)."""
        return str(self.channel) if self.channel >= 0 else self.channels

    @property
    def pca(self) -> bool:
        """Method PCA (any case): the block's top three principal components colour one picture, no tiles."""
        return self.method.upper() == "PCA"

    def color_args(self) -> list[str]:
        """Command-line options of the colorization: those that change pixels under this method.

        Over the colours of the view's command (:attr:`default_color`: ``diff``'s and the
        differences' :data:`DIFF_COLOR`, ``attention``'s :data:`ATTENTION_COLOR`), an Auto scope
        or expression that differs from the command's own default is spelled out.
        """
        defaults = self.default_color
        if self.pca:
            return ["--method", self.method]  # a basis colours the pixels: no transform, range or expressions
        color = self.color
        transform, space = str(color["transform"]), str(color["space"])
        args = ["--method", self.method, "--transform", transform]
        if transform == "linear":
            args += ["--clamp-min", _text(self.clamp_min), "--clamp-max", _text(self.clamp_max)]
        elif transform == "sigmoid":
            args += ["--gain", _text(self.gain), "--offset", _text(self.offset)]
        elif color["auto_scope"] != defaults.auto_scope:
            args += ["--auto-scope", str(color["auto_scope"])]
        if self.method.lower() == "custom":
            args += ["--space", space]
            for name in ("rgb" if space.lower() == "rgb" else "hsl"):
                if color[name] != getattr(defaults, name):
                    args += [f"--{name}", str(color[name])]
        return args

    @property
    def difference(self) -> bool:
        """A pair's difference, or the difference of two stores (``minus``)."""
        return self.minus >= 0 or bool(self.pair and self.mode == "diff")

    def command(self, path: str, *, minus: str | None = None, step: int | None = None, steps: str | None = None,
                out: str = "view") -> str | None:
        """The ``dumpunet`` command that writes this view into folder ``out`` (None: no command does).

        ``minus`` is the path of the store that ``self.minus`` names; ``step`` the resolved step (for
        ``step=0``); ``steps`` the heatmap's (or summary's) step spec. A pair's final difference names
        ``diff``, which writes both finals and their difference; a run's final image ``render
        --final``; the difference of two stores is ``diff A[:RUN] B`` (grids, final images, the
        summary chart), ``attention A[:RUN] B`` or ``heatmap A[:RUN] B``, a pair's difference
        ``attention --pair`` or ``heatmap --pair``.
        """
        if self.minus >= 0 and minus is None:
            return None  # the store to subtract is not known here
        step = step or self.step
        if self.minus >= 0:  # STORE[:RUN] BASE, as diff A B: BASE's run of the same name or its default run
            stores, run, pair = [f"{path}:{self.run}" if self.run else path, minus], [], []
        else:
            stores = [path]
            run = ["--run", self.run] if self.run and not (self.pair and self.mode == "diff") else []
            pair = ["--pair", self.pair] if self.pair and self.mode == "diff" else []
        where = ["--images", str(self.image), "--guidance", self.guidance]
        if self.view == "grid":
            sel = ["--blocks", self.block, "--steps", str(step), *where]
            if self.channel_spec:
                sel += ["--channels", self.channel_spec]
            if self.average:
                sel += ["--average", self.average]
            if self.which == "input":
                sel += ["--input"]
            if self.difference:
                args = ["diff", *stores, *pair, *sel, *self.color_args(), "--plain", "--no-finals"]
            else:  # --plain: the viewer shows bare grids, whose tiles a click maps to channels
                args = ["render", path, *sel, *run, *self.color_args(), "--plain"]
        elif self.view == "attention":
            tokens = ["--tokens", str(self.token)] if self.token >= 0 else []
            heads = {"all": [], "mean": ["--average", "mean"]}.get(self.head, ["--heads", self.head])
            args = ["attention", *stores, *pair, "--layers", self.layer, "--steps", str(step), *tokens, *heads, *where,
                    *run, *self.color_args(), "--plain"]  # the viewer shows the headed grid without title or colour bar
        elif self.view in ("heatmap", "query"):
            what = ["--word", str(self.token)] if self.view == "heatmap" else ["--query", f"{_text(self.qx)},{_text(self.qy)}"]
            layers = ["--layers", self.layers] if self.layers else []
            args = ["heatmap", *stores, *pair, *what, *layers, "--steps", steps or str(step), *where, *run,
                    "--alpha", _text(self.alpha), "--plain"]  # the viewer shows the bare overlay
        elif self.view == "summary":
            which = ["--input"] if self.which == "input" else []
            args = ["diff", *stores, *pair, "--steps", steps or str(step), *where, *which, "--no-finals"]
        elif self.difference:
            args = ["diff", *stores, *pair, "--blocks", self.block, "--steps", str(step), "--images", str(self.image)]
        else:  # a run's final image
            args = ["render", path, "--final", *run, "--images", str(self.image)]
        return "dumpunet " + " ".join(shlex.quote(a) for a in args) + f" --out {shlex.quote(out)}"


def _one_of(value: str, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise SelectionError(f"unknown {what} {value!r} (valid: {', '.join(valid)})")


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)

r"""Per-block ("layer") prompts: ``a (~: IN00-OUT11: cute; M00: excellent :~) girl``.

A *group* ``(~: entry; entry; ... :~)`` inside a prompt gives each U-Net block its own text at
that place. An entry is ``block-spec: prompt``; ``block-spec`` is the grammar of
:mod:`dumpunet.specs` (``IN00``, ``IN00, M00``, ``IN00-OUT11(+2)``, module paths) or ``_``,
"every block no other entry of the group names". Later entries win where entries overlap; ``_``
has the lowest precedence; a block no entry names gets the empty string for that group. A
prompt may hold several groups, and so may the negative prompt. Groups do not nest.

Exact text rules (``ws`` is any run of whitespace, including none):

- ``(~:`` opens a group and ``:~)`` closes it, written exactly so (no inner spaces).
- An entry is ``ws spec ws ':' text`` and ends at the next ``;`` or ``:~)``. The spec runs to
  the entry's first ``:``; the entry's *text* is what follows up to its end, with surrounding
  whitespace stripped and inner whitespace kept as written. So ``(~: IN00 : a  cute ;M00:x:~)``
  gives ``'a  cute'`` to IN00 and ``'x'`` to M00. Further ``:`` in the text are literal
  (``IN00: (cute:1.2)`` is fine). The text may be empty (``IN00: ;``). ``_`` must be an
  entry's whole spec (``IN00, _`` is an error).
- The ``;`` after the last entry may be omitted or written: ``(~: IN00: a; :~)`` is fine, but an
  entry with nothing in it (``;;``, ``(~: ;``, ``(~: :~)``) is an error.
- Escapes inside an entry's text: ``\;`` ``\:`` ``\\`` ``\(~:`` ``\:~)`` stand for ``;`` ``:``
  ``\`` ``(~:`` ``:~)``. Outside groups only ``\(~:`` and ``\:~)`` are escapes (for the literal
  markers). Any other backslash is kept as written, so A1111 escapes such as ``\(`` pass
  through, and a prompt that contains neither ``(~:`` nor ``:~)`` is used byte for byte as
  given. (A backslash directly before a real group cannot be written; put a space between.)
- The group is replaced by its chosen text only: ``a (~: _: cute :~) girl`` is exactly
  ``'a cute girl'`` in every block, the same string as the plain prompt ``'a cute girl'``,
  and ``a (~: IN00: cute :~) girl`` is ``'a  girl'`` (two spaces) in the other blocks.

:func:`parse_layer_prompt` checks the group structure; block specs are checked against a
model's blocks by :meth:`LayerPrompt.resolve`. Both raise :class:`~dumpunet.errors.PromptSyntaxError`
with a caret under the problem in the original prompt string.

Examples
--------
>>> lp = parse_layer_prompt("a (~: IN00-OUT11: cute; M00: excellent :~) girl")
>>> table = lp.resolve(SD1_BLOCKS)
>>> table["IN00"], table["M00"], lp.base()
('a cute girl', 'a excellent girl', 'a  girl')
>>> distinct_prompts(table)["a excellent girl"]
['M00']
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dumpunet.errors import PromptSyntaxError, SpecError
from dumpunet.layouts import BlockLayout
from dumpunet.specs import SD1_BLOCKS, parse_blocks  # noqa: F401 - SD1_BLOCKS: for the doctests

__all__ = [
    "Explanation",
    "LayerPrompt",
    "PromptEntry",
    "PromptGroup",
    "distinct_prompts",
    "explain",
    "parse_layer_prompt",
]

OPEN = "(~:"
CLOSE = ":~)"
REST = "_"
_TEXT_ESCAPES = (";", ":", "\\")
# A '_' that is a spec item of its own (not part of a name such as down_blocks.0).
_LONE_REST = re.compile(r"(?<![\w.])_(?![\w.])")


@dataclass(frozen=True)
class PromptEntry:
    """One ``spec: text`` entry of a group; positions index the original prompt string."""

    spec: str  # as written, surrounding whitespace stripped; "_" for every other block
    text: str  # escapes resolved, surrounding whitespace stripped
    spec_pos: int
    text_pos: int

    @property
    def is_rest(self) -> bool:
        return self.spec == REST


@dataclass(frozen=True)
class PromptGroup:
    """One ``(~: ... :~)`` group; ``start``/``end`` delimit it in the original prompt."""

    entries: tuple[PromptEntry, ...]
    start: int
    end: int


@dataclass(frozen=True)
class LayerPrompt:
    """A parsed prompt: literal ``segments`` around its ``groups`` (one more segment than groups)."""

    source: str
    segments: tuple[str, ...]
    groups: tuple[PromptGroup, ...]

    @property
    def has_groups(self) -> bool:
        return bool(self.groups)

    def base(self) -> str:
        """Return the prompt with every group erased (the "without layer prompt" image's prompt).

        >>> parse_layer_prompt("a (~: M00: cute :~) girl").base()
        'a  girl'
        """
        return "".join(self.segments)

    def winners(
        self, blocks: Sequence[str], aliases: Mapping[str, str] | None = None
    ) -> list[dict[str, PromptEntry | None]]:
        """Return, per group, the entry each block takes (None: no entry names the block)."""
        out = []
        for group in self.groups:
            won: dict[str, PromptEntry | None] = dict.fromkeys(blocks)
            rest = None
            for entry in group.entries:
                if entry.is_rest:
                    rest = entry
                    continue
                for b in self._select(entry, blocks, aliases):
                    won[b] = entry
            if rest is not None:
                won = {b: rest if e is None else e for b, e in won.items()}
            out.append(won)
        return out

    def resolve(self, blocks: Sequence[str], aliases: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the effective prompt of every block, in the order of ``blocks``.

        ``blocks`` is the model's block list (:data:`dumpunet.specs.SD1_BLOCKS`, a layout's
        ``blocks``, a store's ``blocks``); ``aliases`` maps module paths to block names.

        >>> t = parse_layer_prompt("(~: IN00,IN01: A ; M00 : B :~)").resolve(SD1_BLOCKS)
        >>> t["IN00"], t["IN01"], t["IN02"], t["M00"]
        ('A', 'A', '', 'B')
        """
        won = self.winners(blocks, aliases)
        out = {}
        for b in blocks:
            parts = [self.segments[0]]
            for k, group_won in enumerate(won):
                entry = group_won[b]
                parts += [entry.text if entry is not None else "", self.segments[k + 1]]
            out[b] = "".join(parts)
        return out

    def unmatched_entries(self, blocks: Sequence[str], aliases: Mapping[str, str] | None = None) -> list[PromptEntry]:
        """Return the entries no block ends up taking (overridden by later ones, or a needless ``_``).

        >>> lp = parse_layer_prompt("(~: M00: A; IN00-OUT11: B; _: C :~)")
        >>> [e.spec for e in lp.unmatched_entries(SD1_BLOCKS)]
        ['M00', '_']
        """
        # Entries compare by value, and no two entries share a position.
        used = {e for won in self.winners(blocks, aliases) for e in won.values()}
        return [e for g in self.groups for e in g.entries if e not in used]

    def _select(self, entry: PromptEntry, blocks: Sequence[str], aliases: Mapping[str, str] | None) -> list[str]:
        try:
            return parse_blocks(entry.spec, blocks, aliases=aliases)
        except SpecError as err:
            raise PromptSyntaxError(err.message, self.source, entry.spec_pos + err.pos, length=err.length) from err


def parse_layer_prompt(text: str) -> LayerPrompt:
    r"""Parse a prompt that may hold per-block groups (see the module docs for the rules).

    >>> lp = parse_layer_prompt(r"x (~: IN00: a\;b ; _: c :~) y")
    >>> [(e.spec, e.text) for e in lp.groups[0].entries], lp.segments
    ([('IN00', 'a;b'), ('_', 'c')], ('x ', ' y'))
    >>> parse_layer_prompt("a girl").has_groups
    False
    """
    segments: list[str] = []
    groups: list[PromptGroup] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("\\" + OPEN, i) or text.startswith("\\" + CLOSE, i):
            buf.append(text[i + 1 : i + 4])
            i += 4
        elif text.startswith(OPEN, i):
            group = _parse_group(text, i)
            segments.append("".join(buf))
            groups.append(group)
            buf = []
            i = group.end
        elif text.startswith(CLOSE, i):
            raise PromptSyntaxError(
                f"stray {CLOSE!r} outside a group (write '\\{CLOSE}' for the literal text)", text, i, length=3
            )
        else:
            buf.append(text[i])
            i += 1
    segments.append("".join(buf))
    return LayerPrompt(text, tuple(segments), tuple(groups))


def _parse_group(text: str, start: int) -> PromptGroup:
    """Parse the group whose ``(~:`` is at ``start``."""
    n = len(text)

    def unclosed() -> PromptSyntaxError:
        return PromptSyntaxError(f"unclosed group: {OPEN!r} without a matching {CLOSE!r}", text, start, length=3)

    def nested(at: int) -> PromptSyntaxError:
        return PromptSyntaxError(
            f"{OPEN!r} inside a group (groups do not nest; write '\\{OPEN}' for the literal text)", text, at, length=3
        )

    entries: list[PromptEntry] = []
    i = start + len(OPEN)
    while True:
        # the block spec: up to the entry's first ':'
        spec_start = i
        while True:
            if i >= n:
                raise unclosed()
            if text.startswith(OPEN, i):
                raise nested(i)
            if text.startswith(CLOSE, i) or text[i] == ";":
                raw = text[spec_start:i]
                if raw.strip():
                    raise PromptSyntaxError(
                        f"missing ':' after the block spec {raw.strip()!r}", text, spec_start + len(raw.rstrip())
                    )
                if text[i] == ";":
                    raise PromptSyntaxError("empty entry (write 'block-spec: prompt' before ';')", text, i)
                if not entries:
                    raise PromptSyntaxError(
                        "empty group (write at least one 'block-spec: prompt' entry)", text, start, length=i + 3 - start
                    )
                return PromptGroup(tuple(entries), start, i + len(CLOSE))
            if text[i] == ":":
                break
            i += 1
        raw = text[spec_start:i]
        spec = raw.strip()
        spec_pos = spec_start + len(raw) - len(raw.lstrip())
        if not spec:
            raise PromptSyntaxError("empty block spec before ':' (write '_' for every other block)", text, i)
        lone = _LONE_REST.search(spec)
        if spec != REST and lone is not None:
            raise PromptSyntaxError(
                "'_' (every other block) must be the whole block spec of its entry", text, spec_pos + lone.start()
            )
        i += 1
        # the text: up to ';' or ':~)', with escapes
        text_start = i
        buf: list[str] = []
        while True:
            if i >= n:
                raise unclosed()
            c = text[i]
            if c == "\\":
                if text.startswith(OPEN, i + 1):
                    buf.append(OPEN)
                    i += 1 + len(OPEN)
                elif text[i + 1 : i + 2] in _TEXT_ESCAPES:
                    buf.append(text[i + 1])
                    i += 2
                else:
                    buf.append(c)
                    i += 1
                continue
            if text.startswith(OPEN, i):
                raise nested(i)
            if c == ";" or text.startswith(CLOSE, i):
                break
            buf.append(c)
            i += 1
        body = "".join(buf)
        # Escapes never produce whitespace, so the leading whitespace is as written.
        entries.append(PromptEntry(spec, body.strip(), spec_pos, text_start + len(body) - len(body.lstrip())))
        if c == ";":
            i += 1
            continue
        return PromptGroup(tuple(entries), start, i + len(CLOSE))


def distinct_prompts(resolved: Mapping[str, str]) -> dict[str, list[str]]:
    """Group blocks by effective prompt, in order of first use (each prompt is encoded once).

    >>> distinct_prompts({"IN00": "a", "IN01": "b", "M00": "a"})
    {'a': ['IN00', 'M00'], 'b': ['IN01']}
    """
    out: dict[str, list[str]] = {}
    for block, prompt in resolved.items():
        out.setdefault(prompt, []).append(block)
    return out


# ----------------------------------------------------------------------------- explain


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` found: the effective prompts per block, and warnings for the user."""

    layout: BlockLayout
    positive: dict[str, str]
    negative: dict[str, str]
    show_negative: bool
    warnings: tuple[str, ...]

    def lines(self) -> list[str]:
        """The table ``dumpunet explain`` prints: block, cross-attention, prompt(s) in quotes."""
        head = ["block", "cross-attn", "prompt"] + (["negative"] if self.show_negative else [])
        rows = [head]
        for b in self.layout.blocks:
            row = [b, "yes" if b in self.layout.cross_attention else "no", _quote(self.positive[b])]
            rows.append(row + ([_quote(self.negative[b])] if self.show_negative else []))
        widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
        return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def explain(positive: str, negative: str = "", *, layout: BlockLayout) -> Explanation:
    """Resolve a positive and a negative layer prompt on ``layout`` and collect warnings.

    Warnings name (1) prompts that only blocks without cross-attention get, so the text has no
    effect, and (2) entries no block ends up taking.

    >>> from dumpunet.layouts import builtin_layout
    >>> ex = explain("a (~: IN00: cute :~) girl", layout=builtin_layout("sd1"))
    >>> ex.positive["IN00"], ex.positive["IN01"]
    ('a cute girl', 'a  girl')
    >>> ex.warnings
    ('positive prompt: "a cute girl" goes only to IN00, which has no cross-attention: the text has no effect',)
    """
    tables, warnings = {}, []
    for label, source in (("positive", positive), ("negative", negative)):
        try:
            lp = parse_layer_prompt(source)
            tables[label] = lp.resolve(layout.blocks, layout.aliases)
            unmatched = lp.unmatched_entries(layout.blocks, layout.aliases)
        except PromptSyntaxError as err:
            if label == "positive":
                raise
            message = f"{err.message} (in the negative prompt)"
            raise PromptSyntaxError(message, err.text, err.pos, length=err.length) from err
        if not lp.has_groups:
            continue
        reaches = {p for b, p in tables[label].items() if b in layout.cross_attention}
        for prompt, blocks in distinct_prompts(tables[label]).items():
            if prompt not in reaches:
                which = "which has" if len(blocks) == 1 else "which have"
                warnings.append(
                    f"{label} prompt: {_quote(prompt)} goes only to {', '.join(blocks)}, {which} no cross-attention:"
                    " the text has no effect"
                )
        for entry in unmatched:
            warnings.append(
                f"{label} prompt: entry {_quote(f'{entry.spec}: {entry.text}')} (column {entry.spec_pos + 1}) "
                f"applies to no block: {_why_unmatched(lp, entry)}"
            )
    return Explanation(layout, tables["positive"], tables["negative"], bool(negative), tuple(warnings))


def _why_unmatched(lp: LayerPrompt, entry: PromptEntry) -> str:
    group = next(g for g in lp.groups if entry in g.entries)
    later = group.entries[group.entries.index(entry) + 1 :]
    if not entry.is_rest:
        return "later entries override it on every block it names"
    if any(e.is_rest for e in later):
        return "a later '_' entry replaces it"
    return "the other entries name every block"


def _quote(text: str) -> str:
    # Quotes show leading, trailing and doubled spaces; control characters would break the table.
    return '"' + text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'

"""The block and step grammar shared by the recorder, the analyzer and the layer-prompt parser.

A spec is a comma-separated list of items; spaces are allowed anywhere between tokens and
block names are case-insensitive. An empty spec selects everything.

======================  ======================================================
``IN00``                one block
``IN00, IN01, M00``     several blocks
``IN00-OUT11``          an inclusive range, in the model's block order
                        (IN11, M00 and OUT00 are neighbours)
``IN00-OUT11(+2)``      every second block of the range, starting at its first
``1,5,10``              steps (or channels, heads, ...): the same grammar on integers
``1-20(+5)``            1, 6, 11, 16
======================  ======================================================

A diffusers module path (``down_blocks.1.attentions.0``) is accepted wherever a block name
is, through the alias table of the model; :func:`resolve_block` documents the rule.

Examples
--------
>>> parse_blocks("IN00-OUT11(+2)", SD1_BLOCKS)[:7]
['IN00', 'IN02', 'IN04', 'IN06', 'IN08', 'IN10', 'M00']
>>> parse_steps("1-20(+5)", 20)
[1, 6, 11, 16]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from dumpunet.errors import SpecError

__all__ = [
    "INT_ITEM",
    "SD1_BLOCKS",
    "SDXL_BLOCKS",
    "block_names",
    "check_ints",
    "format_ints",
    "parse_blocks",
    "parse_ints",
    "parse_steps",
    "resolve_block",
]


def block_names(n_in: int, n_out: int) -> list[str]:
    """Return the community block names for a U-Net with ``n_in`` IN and ``n_out`` OUT blocks.

    >>> block_names(2, 2)
    ['IN00', 'IN01', 'M00', 'OUT00', 'OUT01']
    """
    return [f"IN{i:02d}" for i in range(n_in)] + ["M00"] + [f"OUT{i:02d}" for i in range(n_out)]


SD1_BLOCKS: tuple[str, ...] = tuple(block_names(12, 12))
SDXL_BLOCKS: tuple[str, ...] = tuple(block_names(9, 9))

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<int>\d+(?![A-Za-z_.]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<punct>[,\-()+])
    """,
    re.VERBOSE,
)


INT_ITEM = re.compile(r"^\s*\d+\s*(-\s*\d+\s*(\(\s*\+\s*\d+\s*\)\s*)?)?$")
"""One item of an integer spec (``5``, ``1-8``, ``0-76(+4)``): how token selections tell positions from words."""

MAX_DIGITS = 18
"""Longer numbers are refused before ``int()`` reads them (Python refuses over 4,300 digits with a ValueError)."""

MAX_OPEN_RANGE = 100_000
"""Most integers a spec may select where the upper end is not known yet (``parse_ints(hi=None)``)."""


@dataclass(frozen=True)
class _Tok:
    kind: str  # "int", "name", "punct", "end"
    text: str
    pos: int


def _number(tok: _Tok, text: str, what: str) -> int:
    if len(tok.text) > MAX_DIGITS:
        raise SpecError(f"number too large ({len(tok.text)} digits)", text, tok.pos, length=len(tok.text), what=what)
    return int(tok.text)


def _tokenize(text: str, what: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SpecError(f"unexpected character {text[pos]!r}", text, pos, what=what)
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            toks.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    toks.append(_Tok("end", "", len(text)))
    return toks


@dataclass(frozen=True)
class _Item:
    first: _Tok
    last: _Tok | None
    stride: int
    stride_tok: _Tok | None


def _parse_items(text: str, atom: str, what: str) -> list[_Item]:
    """Parse ``item (',' item)*`` where an item is ``atom ['-' atom ['(' '+' INT ')']]``."""
    toks = _tokenize(text, what)
    i = 0
    noun = "a block name" if atom == "name" else "a number"

    def expect_atom(after: str) -> _Tok:
        nonlocal i
        tok = toks[i]
        if tok.kind != atom:
            got = "the end" if tok.kind == "end" else repr(tok.text)
            raise SpecError(f"expected {noun} {after}, got {got}", text, tok.pos, what=what)
        i += 1
        return tok

    def expect_punct(p: str, after: str) -> _Tok:
        nonlocal i
        tok = toks[i]
        if tok.kind != "punct" or tok.text != p:
            got = "the end" if tok.kind == "end" else repr(tok.text)
            raise SpecError(f"expected {p!r} {after}, got {got}", text, tok.pos, what=what)
        i += 1
        return tok

    items: list[_Item] = []
    if toks[0].kind == "end":
        return items
    while True:
        first = expect_atom("at the start of an item" if not items else "after ','")
        last = None
        stride, stride_tok = 1, None
        if toks[i].kind == "punct" and toks[i].text == "-":
            i += 1
            last = expect_atom(f"after '{first.text}-'")
            if toks[i].kind == "punct" and toks[i].text == "(":
                i += 1
                expect_punct("+", "after '(' (a range step looks like '(+2)')")
                stride_tok = toks[i]
                if stride_tok.kind != "int":
                    got = "the end" if stride_tok.kind == "end" else repr(stride_tok.text)
                    raise SpecError(f"expected a step size after '(+', got {got}", text, stride_tok.pos, what=what)
                i += 1
                stride = _number(stride_tok, text, what)
                if stride < 1:
                    raise SpecError("range step must be at least +1", text, stride_tok.pos, what=what)
                expect_punct(")", f"after '+{stride_tok.text}'")
        elif toks[i].kind == "punct" and toks[i].text == "(":
            raise SpecError("a step '(+N)' needs a range before it, like 'IN00-OUT11(+2)'", text, toks[i].pos, what=what)
        items.append(_Item(first, last, stride, stride_tok))
        tok = toks[i]
        if tok.kind == "end":
            return items
        if tok.kind == "punct" and tok.text == ",":
            i += 1
            continue
        raise SpecError(f"expected ',' or the end, got {tok.text!r}", text, tok.pos, what=what)


def resolve_block(name: str, blocks: Sequence[str], aliases: Mapping[str, str] | None = None) -> str | None:
    """Return the canonical block name that ``name`` refers to, or None.

    ``name`` may be a block name in any case, or a diffusers module path listed in ``aliases``
    (module path -> block name, as the store's block table or the recorder builds it).

    >>> aliases = {"conv_in": "IN00", "down_blocks.0.attentions.0": "IN01"}
    >>> resolve_block("in01", SD1_BLOCKS, aliases)
    'IN01'
    >>> resolve_block("down_blocks.0.attentions.0", SD1_BLOCKS, aliases)
    'IN01'
    >>> resolve_block("IN12", SD1_BLOCKS, aliases) is None
    True
    """
    upper = name.upper()
    for b in blocks:
        if b.upper() == upper:
            return b
    if aliases:
        if name in aliases:
            return aliases[name]
        lower = name.lower()
        for alias, b in aliases.items():
            if alias.lower() == lower:
                return b
    return None


def parse_blocks(
    spec: str,
    blocks: Sequence[str],
    *,
    aliases: Mapping[str, str] | None = None,
    what: str = "block spec",
) -> list[str]:
    """Return the blocks ``spec`` selects, in the model's block order, without repeats.

    ``blocks`` is the model's ordered block list; an empty spec selects all of it.

    >>> parse_blocks("M00, in00", SD1_BLOCKS)
    ['IN00', 'M00']
    >>> parse_blocks("IN10-OUT01", SD1_BLOCKS)
    ['IN10', 'IN11', 'M00', 'OUT00', 'OUT01']
    """
    items = _parse_items(spec, "name", what)
    if not items:
        return list(blocks)
    return [blocks[k] for k in sorted(_select_blocks(items, spec, blocks, aliases, what))]


def _select_blocks(
    items: Sequence[_Item], spec: str, blocks: Sequence[str], aliases: Mapping[str, str] | None, what: str
) -> set[int]:
    """Indices into ``blocks`` that block items select (errors point into ``spec``)."""
    index = {b: k for k, b in enumerate(blocks)}

    def look(tok: _Tok) -> int:
        b = resolve_block(tok.text, blocks, aliases)
        if b is None:
            known = f"{blocks[0]}..{blocks[-1]}" if blocks else "none"
            raise SpecError(
                f"unknown block {tok.text!r} (this model has {known})", spec, tok.pos, length=len(tok.text), what=what
            )
        return index[b]

    return _expand(items, spec, look, what)


def _ranges(items: Sequence[_Item], spec: str, look: Callable[[_Tok], int], what: str) -> list[range]:
    """The ranges that items select once ``look`` maps (and checks) their ends, not yet expanded."""
    out: list[range] = []
    for item in items:
        a = look(item.first)
        if item.last is None:
            out.append(range(a, a + 1))
            continue
        z = look(item.last)
        if z < a:
            raise SpecError(
                f"range {item.first.text}-{item.last.text} runs backwards (write {item.last.text}-{item.first.text})",
                spec,
                item.first.pos,
                length=item.last.pos + len(item.last.text) - item.first.pos,
                what=what,
            )
        out.append(range(a, z + 1, item.stride))
    return out


def _expand(items: Sequence[_Item], spec: str, look: Callable[[_Tok], int], what: str, *,
            limit: int | None = None, noun: str = "value") -> set[int]:
    """The integers that items select once ``look`` maps their ends to integers.

    ``look`` bounds every end by what the spec selects from, so a range is never larger than
    that; where nothing bounds it (``limit``), a range of more than ``limit`` values is refused
    before it is expanded.
    """
    ranges = _ranges(items, spec, look, what)
    if limit is not None:
        total = 0
        for item, r in zip(items, ranges, strict=True):
            total += len(r)
            if total > limit:
                end = item.last or item.first
                message = (f"range selects {len(r)} {noun}s" if len(r) > limit
                           else f"the ranges up to here select {total} {noun}s")
                raise SpecError(f"{message}, more than {limit} without a known end", spec,
                                item.first.pos, length=end.pos + len(end.text) - item.first.pos, what=what)
    chosen: set[int] = set()
    for r in ranges:
        chosen.update(r)
    return chosen


def parse_ints(
    spec: str,
    lo: int,
    hi: int | None,
    *,
    noun: str = "step",
    what: str = "step spec",
) -> list[int]:
    """Return the integers ``spec`` selects from ``lo..hi``, ascending, without repeats.

    An empty spec selects ``lo..hi`` (which needs a known ``hi``). ``hi=None`` means the upper
    bound is not known yet: only ``lo`` is checked, and a range may select at most
    :data:`MAX_OPEN_RANGE` values (:func:`check_ints` checks such a spec without expanding it).

    >>> parse_ints("3, 1-2", 0, 9, noun="channel")
    [1, 2, 3]
    >>> parse_ints("", 1, 4)
    [1, 2, 3, 4]
    """
    items = _parse_items(spec, "int", what)
    if not items:
        if hi is None:
            raise ValueError("an empty spec needs a known upper bound")
        return list(range(lo, hi + 1))

    look = _int_checker(spec, lo, hi, noun, what)
    return sorted(_expand(items, spec, look, what, limit=MAX_OPEN_RANGE if hi is None else None, noun=noun))


def _int_checker(spec: str, lo: int, hi: int | None, noun: str, what: str) -> Callable[[_Tok], int]:
    def check(tok: _Tok) -> int:
        v = _number(tok, spec, what)
        if v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f"{lo}.."
            raise SpecError(f"{noun} {v} out of range {rng}", spec, tok.pos, length=len(tok.text), what=what)
        return v

    return check


def check_ints(spec: str, lo: int, hi: int | None = None, *, noun: str = "step", what: str = "step spec") -> None:
    """Check an integer spec's syntax and bounds without expanding it (the recorder before it knows ``hi``).

    >>> check_ints("1-999999999", 1)
    >>> check_ints("0-3", 1)
    Traceback (most recent call last):
    ...
    dumpunet.errors.SpecError: bad step spec: step 0 out of range 1..
      0-3
      ^
    """
    _ranges(_parse_items(spec, "int", what), spec, _int_checker(spec, lo, hi, noun, what), what)


def parse_steps(spec: str, total: int | None) -> list[int]:
    """Return the 1-based sampler steps ``spec`` selects out of ``total``.

    >>> parse_steps("1,5,10", 20)
    [1, 5, 10]
    """
    return parse_ints(spec, 1, total, noun="step", what="step spec")


def format_ints(values: Iterable[int]) -> str:
    """Format integers compactly: ``[1, 2, 3, 5]`` -> ``'1-3,5'`` (the spec grammar reads it back)."""
    vals = sorted(set(values))
    parts: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(parts)


def parse_layers(
    spec: str,
    layers: Sequence[str],
    blocks: Sequence[str],
    *,
    aliases: Mapping[str, str] | None = None,
    what: str = "layer spec",
) -> list[str]:
    """Return the attention layers ``spec`` selects, in ``layers`` order.

    An item is a layer name (``IN04.attn2.1``, any case), or a block, block range or module path,
    which selects every layer of those blocks (a layer ``B.attnN[.i]`` belongs to block ``B``).
    An empty spec selects every layer.

    >>> layers = ["IN01.attn1", "IN01.attn2", "M00.attn2", "OUT11.attn2"]
    >>> parse_layers("IN01-M00", layers, SD1_BLOCKS)
    ['IN01.attn1', 'IN01.attn2', 'M00.attn2']
    >>> parse_layers("out11.attn2, IN01.attn1", layers, SD1_BLOCKS)
    ['IN01.attn1', 'OUT11.attn2']
    """
    items = _parse_items(spec, "name", what)
    if not items:
        return list(layers)
    by_upper = {name.upper(): name for name in layers}
    chosen = {by_upper[it.first.text.upper()] for it in items if it.last is None and it.first.text.upper() in by_upper}
    block_items = [it for it in items if not (it.last is None and it.first.text.upper() in by_upper)]
    picked = {blocks[k] for k in _select_blocks(block_items, spec, blocks, aliases, what)}
    chosen.update(name for name in layers if name.split(".", 1)[0] in picked)
    return [name for name in layers if name in chosen]

r"""AUTOMATIC1111 prompt syntax: emphasis, ``BREAK``, prompt editing and alternation.

Behaviour re-derived from the web UI's documented examples (``modules/prompt_parser.py``), so a
prompt pasted from A1111 gets the pieces and the schedule A1111 would give it. Nothing here
raises on odd text: A1111 takes malformed syntax as text, and so does this module; every place
where that happens is described in the result's ``notes`` (shown by ``dumpunet explain``).

Emphasis (:func:`parse_emphasis`):

- ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1,
  ``(text:1.3)`` multiplies it by 1.3; brackets nest and multiply.
- ``\(`` ``\)`` ``\[`` ``\]`` ``\\`` are the literal characters; any other backslash is dropped.
- A ``)`` or ``]`` with nothing open is text; a ``(`` or ``[`` never closed applies to the end.
- ``:`` is a weight only directly before a number and ``)``: ``(a: 1.3)`` is the text
  ``a: 1.3`` at 1.1.
- ``BREAK`` (a whole word, in capitals) ends the current 75-token chunk -- but only outside
  brackets: inside them A1111 tokenizes it as the word ``BREAK`` with a negative weight.
- Neighbouring pieces with the same weight are merged.

Prompt editing (:func:`prompt_schedule`), for ``N`` sampling steps:

- ``[from:to:when]`` is ``from`` until step ``when`` and ``to`` after it; ``[to:when]`` adds
  ``to``; ``[from::when]`` removes ``from``. ``when`` below 1 is a fraction of ``N``.
- ``[a|b|c]`` alternates every step. Of each alternative A1111 keeps only its first part (a
  run of text, or one bracket): ``[a (b)|c]`` alternates ``a `` and ``c``.
- Each entry is ``(end_step, text)``: the text is used while the sampler's 0-based step index
  is at most ``end_step`` (A1111's off-by-one: ``[a:b:2]`` gives ``a`` for steps 0, 1, 2).
- A prompt whose brackets do not fit the grammar (e.g. a ``|`` outside brackets, or a lone
  trailing backslash) is not scheduled at all; an unmatched bracket is simply text.
- Known difference: A1111's parser (a general Earley parser) sometimes reads an edit followed
  directly by two or more stray bracket characters (``[a:b:2]]:``, ``(x [a:b:2]):``) as plain
  text; this module always takes the leftmost complete bracket construct and schedules it.

Examples
--------
>>> parse_emphasis("a (cute:1.2) girl BREAK [blurry]").pieces
(Piece(text='a ', weight=1.0), Piece(text='cute', weight=1.2), Piece(text=' girl', weight=1.0),
 Piece(text='BREAK', weight=1.0, is_break=True), Piece(text='blurry', weight=0.9090909090909091))
>>> prompt_schedule("a [b:c:1] d", 10).entries
((1, 'a b d'), (10, 'a c d'))
>>> prompt_schedule("a [b:c:1] d", 10).text_at(2)
'a c d'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EMPHASIS_MODES",
    "Emphasis",
    "Piece",
    "Schedule",
    "parse_emphasis",
    "prompt_schedule",
]

EMPHASIS_MODES = ("original", "no-norm", "ignore", "none")
"""A1111's "Emphasis mode" settings: weights applied and the chunk mean restored ("Original"),
weights applied without the rescale ("No norm"), brackets parsed but weights ignored
("Ignore"), and no parsing at all, brackets and BREAK taken as text ("None")."""

_UP = 1.1
_DOWN = 1 / 1.1
_BREAK_WEIGHT = -1.0  # A1111's marker for BREAK; brackets around it change it into text

# One token of the emphasis syntax per match, tried in this order.
_EMPHASIS_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])      # \( \) \[ \] \\ : the character itself
    |(?P<backslash>\\)            # any other backslash: dropped
    |(?P<open>[(\[])
    |:(?P<weight>[+-]?[.\d]+)\)   # ':1.3)' closes a round bracket with that weight
    |(?P<close>[)\]])
    |(?P<text>[^\\()\[\]:]+)
    |(?P<colon>:)
    """,
    re.X,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*")


@dataclass(frozen=True)
class Piece:
    """A run of prompt text with one weight; ``is_break`` marks a ``BREAK`` (no text of its own)."""

    text: str
    weight: float
    is_break: bool = False

    def __repr__(self) -> str:
        extra = ", is_break=True" if self.is_break else ""
        return f"Piece(text={self.text!r}, weight={self.weight!r}{extra})"


@dataclass(frozen=True)
class Emphasis:
    """The weighted pieces of one prompt text, and what was taken literally."""

    text: str
    pieces: tuple[Piece, ...]
    notes: tuple[str, ...] = ()


def parse_emphasis(text: str, *, mode: str = "original") -> Emphasis:
    r"""Split ``text`` into weighted pieces the way A1111 does before tokenizing.

    ``mode="none"`` (A1111's Emphasis "None") returns the text as one piece at weight 1, brackets
    and ``BREAK`` included; every other mode parses (weights are the encoder's business).

    Examples
    --------
    >>> [(p.text, round(p.weight, 4)) for p in parse_emphasis("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).").pieces]
    [('a ', 1.0), ('house', 1.573), (' ', 1.1), ('on', 1.0), (' a ', 1.1), ('hill', 0.55), (', sun, ', 1.1),
     ('sky', 1.4641), ('.', 1.1)]
    >>> parse_emphasis(r"\(literal\]").pieces
    (Piece(text='(literal]', weight=1.0),)
    >>> parse_emphasis("(unbalanced").notes
    ("'(' at column 1 is never closed: it applies to the end of the prompt",)
    """
    if mode not in EMPHASIS_MODES:
        raise ValueError(f"unknown emphasis mode {mode!r}; choose one of {', '.join(EMPHASIS_MODES)}")
    if mode == "none":
        return Emphasis(text, (Piece(text, 1.0),), ("emphasis mode 'none': brackets and BREAK are plain text",))
    runs: list[list] = []  # [text, weight, column of a BREAK marker or None]
    notes: list[str] = []
    rounds: list[tuple[int, int]] = []  # (index into runs, column) of each open bracket
    squares: list[tuple[int, int]] = []

    scalings: list[tuple[int, int, float]] = []  # (first run, end, factor) in the order A1111 applies them

    def scale(start: int, factor: float) -> None:
        scalings.append((start, len(runs), factor))

    def add_text(s: str, col: int) -> None:
        at = 0
        for m in _BREAK_SPLIT.finditer(s):
            runs.append([s[at : m.start()], 1.0, None])
            runs.append(["BREAK", _BREAK_WEIGHT, col + s.index("BREAK", m.start())])
            at = m.end()
        runs.append([s[at:], 1.0, None])

    for m in _EMPHASIS_TOKEN.finditer(text):
        col, kind = m.start() + 1, m.lastgroup
        token = m.group(0)
        if kind == "escape":
            runs.append([token[1], 1.0, None])
        elif kind == "backslash":
            runs.append(["", 1.0, None])
            notes.append(f"'\\' at column {col} is dropped (only ( ) [ ] \\ can be escaped)")
        elif kind == "open":
            (rounds if token == "(" else squares).append((len(runs), col))
        elif kind == "weight" and rounds:
            try:
                factor = float(m.group("weight"))
            except ValueError:  # A1111 itself fails on '(a:1.2.3)'; take the number as text
                notes.append(f"weight {m.group('weight')!r} at column {col + 1} is not a number: taken as text")
                add_text(token[:-1], col)
                factor = _UP
            scale(rounds.pop()[0], factor)
        elif token == ")" and rounds:
            scale(rounds.pop()[0], _UP)
        elif token == "]" and squares:
            scale(squares.pop()[0], _DOWN)
        else:
            if kind in ("close", "weight"):
                notes.append(f"{token!r} at column {col} closes nothing: taken as text")
            elif kind == "colon" and rounds:
                notes.append(f"':' at column {col} is text (a weight is ':' and a number directly before ')')")
            add_text(token, col)
    for start, col in reversed(rounds):
        notes.append(f"'(' at column {col} is never closed: it applies to the end of the prompt")
        scale(start, _UP)
    for start, col in reversed(squares):
        notes.append(f"'[' at column {col} is never closed: it applies to the end of the prompt")
        scale(start, _DOWN)
    # A1111 multiplies every later run's weight at each closing bracket: O(brackets x runs) in
    # Python took 13 s for 4,000 '('. numpy applies the same multiplications to each run in the
    # same order (IEEE float64, as Python floats), so the weights are bit-identical, in C.
    weights = np.array([run[1] for run in runs], dtype=np.float64)
    with np.errstate(over="ignore"):  # thousands of '(' reach inf, as Python floats do silently
        for start, end, factor in scalings:
            weights[start:end] *= factor
    for run, weight in zip(runs, weights.tolist()):
        run[1] = weight
    for text_, weight, marker in runs:
        if marker is not None and weight != _BREAK_WEIGHT:
            notes.append(f"BREAK at column {marker} is inside brackets: A1111 reads it as the word 'BREAK'")
    merged: list[list] = []
    for run in runs or [["", 1.0, None]]:
        if merged and merged[-1][1] == run[1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run[:2])
    # Empty pieces tokenize to nothing; they are dropped after merging, as merging saw them.
    pieces = tuple(
        Piece("BREAK", 1.0, True) if t == "BREAK" and w == _BREAK_WEIGHT else Piece(t, w)
        for t, w in merged
        if t or len(merged) == 1
    )
    return Emphasis(text, pieces, tuple(dict.fromkeys(notes)))  # first occurrences, in order


# ---------------------------------------------------------------- prompt editing and alternation
# A parsed prompt is a list of nodes: str (text kept as written), list (a bracket kept as
# written, with its content), _Edit or _Alternate.


@dataclass
class _Edit:
    before: list
    after: list
    when: float
    end: int = 0  # `when` as a step, set once the step count is known


@dataclass
class _Alternate:
    options: list


_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\]")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_STRAY = "[]():"  # characters the grammar allows outside any bracket
_MAX_DEPTH = 100  # deeper brackets are taken as text rather than risking Python's recursion limit


class _Fail(Exception):
    pass


class _Grammar:
    """Recursive descent over A1111's editing grammar, leftmost bracket constructs first."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.failed: set[int] = set()  # bracket positions known not to start a construct

    def seq(self, i: int, depth: int) -> tuple[list, int]:
        """Parse a bracket's content from ``i`` up to the next ``: | ] )`` at this level."""
        s, nodes = self.s, []
        while i < len(s):
            if s[i] in "([":
                node, i = self.bracket(i, depth + 1)
                nodes.append(node)
                continue
            m = _PLAIN.match(s, i)
            if m is None:
                return nodes, i  # one of : | ] ), or a backslash the grammar cannot read
            nodes.append(m.group(0))
            i = m.end()
        return nodes, i

    def bracket(self, i: int, depth: int = 0) -> tuple[object, int]:
        """Parse the bracket construct at ``s[i]``; raise :class:`_Fail` if there is none."""
        if depth > _MAX_DEPTH or i in self.failed:
            raise _Fail
        try:
            return self._bracket(i, depth)
        except _Fail:
            self.failed.add(i)  # so that a retry from the top fails at once: linear time
            raise

    def _bracket(self, i: int, depth: int) -> tuple[object, int]:
        s = self.s
        first, j = self.seq(i + 1, depth)
        at = s[j : j + 1]
        if s[i] == "(":
            if at == ")":
                return ["(", *first, ")"], j + 1
            if at == ":":
                second, k = self.seq(j + 1, depth)
                if s[k : k + 1] == ")":
                    return ["(", *first, ":", *second, ")"], k + 1
            raise _Fail
        if at == "]":
            return ["[", *first, "]"], j + 1
        if at == "|":
            options = [first]
            while s[j : j + 1] == "|":
                option, j = self.seq(j + 1, depth)
                options.append(option)
            if s[j : j + 1] == "]":
                return _Alternate(options), j + 1
            raise _Fail
        if at == ":":
            m = _NUMBER.match(s, j + 1)
            if m is not None:  # [to:when]
                return _Edit([], first, float(m.group(1))), m.end()
            second, k = self.seq(j + 1, depth)
            m = _NUMBER.match(s, k + 1) if s[k : k + 1] == ":" else None
            if m is not None:  # [from:to:when]
                return _Edit(first, second, float(m.group(1))), m.end()
        raise _Fail

    def top(self) -> list | None:
        """Parse the whole prompt; None where the grammar cannot read it (A1111 then schedules nothing)."""
        s, nodes, i = self.s, [], 0
        while i < len(s):
            if s[i] in "([":
                try:
                    node, i = self.bracket(i)
                    nodes.append(node)
                    continue
                except _Fail:
                    pass
            if s[i] in _STRAY:
                nodes.append(s[i])
                i += 1
                continue
            m = _PLAIN.match(s, i)
            if m is None:
                return None
            nodes.append(m.group(0))
            i = m.end()
        return nodes


def _walk(nodes: list):
    for node in nodes:
        yield node
        if isinstance(node, list):
            yield from _walk(node)
        elif isinstance(node, _Edit):
            yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            for option in node.options:
                yield from _walk(option)


def _render(nodes: list, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, list):
            out.append(_render(node, step))
        elif isinstance(node, _Edit):
            out.append(_render(node.before if step <= node.end else node.after, step))
        else:  # A1111 keeps only the first element of the chosen option (see prompt_schedule)
            out.append(_render(node.options[(step - 1) % len(node.options)][:1], step))
    return "".join(out)


@dataclass(frozen=True)
class Schedule:
    """Which text the U-Net sees when: ``entries`` are ``(end_step, text)``, ``end_step`` ascending."""

    prompt: str
    steps: int
    entries: tuple[tuple[int, str], ...]
    notes: tuple[str, ...] = field(default=())

    def text_at(self, step: int) -> str:
        """Return the text for the sampler's 0-based step index ``step`` (A1111's ``self.step``)."""
        for end, text in self.entries:
            if step <= end:
                return text
        return self.entries[-1][1]

    def per_step(self) -> list[str]:
        """Return the text of each of the ``steps`` steps, in order.

        >>> prompt_schedule("[a|b]", 4).per_step()
        ['a', 'a', 'b', 'a']
        """
        return [self.text_at(i) for i in range(self.steps)]

    @property
    def texts(self) -> tuple[str, ...]:
        """The distinct texts, in order of first use."""
        return tuple(dict.fromkeys(t for _, t in self.entries))


def prompt_schedule(prompt: str, steps: int) -> Schedule:
    """Return the prompt-editing schedule of ``prompt`` for ``steps`` sampling steps.

    Examples
    --------
    >>> prompt_schedule("a[b:[c:d:2]:1]e", 10).entries
    ((1, 'abe'), (2, 'ace'), (10, 'ade'))
    >>> prompt_schedule("a [b:.5] c", 10).entries
    ((5, 'a  c'), (10, 'a b c'))
    >>> prompt_schedule("a | b [c:2]", 10).notes
    ("the prompt does not fit A1111's editing grammar (a '|' outside brackets, or a trailing '\\\\'): no prompt editing",)
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    nodes = _Grammar(prompt).top()
    if nodes is None:
        note = "the prompt does not fit A1111's editing grammar (a '|' outside brackets, or a trailing '\\'): no prompt editing"
        return Schedule(prompt, steps, ((steps, prompt),), (note,) if "[" in prompt else ())
    ends, notes = {steps}, []
    for node in _walk(nodes):
        if isinstance(node, _Edit):
            when = node.when * steps if node.when < 1 else node.when
            node.end = min(steps, int(when))
            ends.add(node.end)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
            for option in node.options:
                if len(option) > 1:
                    whole, kept = _render(option, 1), _render(option[:1], 1)
                    notes.append(f"alternative {whole!r}: A1111 keeps only its first part, {kept!r}")
    # An entry that ends before step 0 is never used (a negative `when`).
    entries = tuple((end, _render(nodes, end)) for end in sorted(ends) if end >= 0)
    return Schedule(prompt, steps, entries, tuple(notes))

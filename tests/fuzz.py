"""Shared pieces of the grammar fuzz tests: hypothesis strategies and the one property they check.

Every grammar (block/step specs, layer prompts, A1111 prompt syntax, colour expressions) must,
on any text, either return a value or raise one of its *documented* error classes, quickly;
anything else (an ``IndexError``, a ``RecursionError``, a ``MemoryError``, a minutes-long
expansion) is a bug. :func:`outcome` runs one call and checks that; :data:`FUZZ` is the
hypothesis profile (a deadline per example, so a slow path fails the test instead of passing
late).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from dumpunet.errors import DumpUnetError, SyntaxErrorWithCaret

FUZZ = settings(
    max_examples=300,
    # Generous for a loaded 2-core machine; a real problem (expanding 10^9 steps, deep recursion)
    # takes far longer than this.
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow],
)
"""The settings every fuzz test runs under."""

NASTY = ["", " ", "\t", "\n", "\r", "\x00", "\x1b[31m", "\u200b", "é", "漢", "🙂", "\\", "'", '"', "%", "{}", "$"]
"""Characters and fragments no grammar gives a meaning: control characters, escapes, wide characters."""

HUGE = ["9" * 19, "9" * 5000, "999999999", "18446744073709551616", "1e308", "inf", "nan"]
"""Numbers too large for an int64, for ``int()`` (over 4,300 digits) or for a float."""


def pieces(*fragments: Sequence[str], max_size: int = 16) -> st.SearchStrategy[str]:
    """Text made of a grammar's own fragments, the nasty ones and a little arbitrary text, joined."""
    vocab = [f for group in fragments for f in group] + NASTY + HUGE
    item = st.one_of(st.sampled_from(vocab), st.text(max_size=3))
    return st.lists(item, max_size=max_size).map("".join)


def repeated(fragment: str, *, up_to: int = 3000) -> st.SearchStrategy[str]:
    """One fragment repeated many times: deep nesting, long ranges, long words."""
    return st.integers(1, up_to).map(lambda n: fragment * n)


def outcome(documented: type[BaseException] | tuple[type[BaseException], ...], fn: Callable[..., Any],
            *args: Any, **kw: Any) -> Any:
    """Call ``fn``; return its value, or the documented error it raised (checked to read well).

    Any other exception propagates and fails the test with its traceback.
    """
    try:
        return fn(*args, **kw)
    except documented as exc:
        check_message(exc)
        return exc


def check_message(exc: BaseException) -> None:
    """A documented error reads as a message: non-empty, no traceback, a caret under its text.

    A :class:`SyntaxErrorWithCaret` renders as three lines (message, the text, the caret) with
    no control character that would move the terminal's cursor, and the caret inside the text
    line.
    """
    text = str(exc)
    assert text.strip(), f"{type(exc).__name__} with an empty message"
    assert "Traceback" not in text
    if not isinstance(exc, DumpUnetError):
        return
    if isinstance(exc, SyntaxErrorWithCaret):
        lines = text.split("\n")
        assert len(lines) >= 3, text
        shown, caret = lines[-2], lines[-1]
        assert caret.strip() and set(caret.strip()) == {"^"}, text
        assert caret.index("^") <= len(shown), text  # under the text, or just after its end
        for line in lines[-2:]:
            assert all(c.isprintable() for c in line), f"control character in {line!r}"

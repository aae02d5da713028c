"""The caret message of every syntax error (:class:`~dumpunet.errors.SyntaxErrorWithCaret`), on any text."""

from __future__ import annotations

from fuzz import FUZZ, check_message
from hypothesis import given
from hypothesis import strategies as st

from dumpunet.errors import SyntaxErrorWithCaret


@FUZZ
@given(st.text(max_size=400), st.integers(-5, 500), st.integers(-5, 500))
def test_the_caret_stays_under_the_text_it_points_at(text, pos, length):
    err = SyntaxErrorWithCaret("bad thing", text, pos, length=length)
    check_message(err)  # three lines, printable, the caret inside the shown text
    _, shown, caret = str(err).split("\n")
    assert len(shown) <= 2 + SyntaxErrorWithCaret.WIDTH + 2  # a window (with its two ellipses) of long texts
    start = caret.index("^") - 2
    if len(text) <= SyntaxErrorWithCaret.WIDTH and 0 <= pos < len(text) and text[pos].isprintable():
        assert shown[2 + start] == text[pos]  # the caret's first mark is under the character it names


def test_a_long_text_is_shown_around_the_caret():
    text = "a" * 300 + "X" + "b" * 300
    _, shown, caret = str(SyntaxErrorWithCaret("here", text, 300)).split("\n")
    assert shown[caret.index("^")] == "X" and shown.startswith("  …") and shown.endswith("…")

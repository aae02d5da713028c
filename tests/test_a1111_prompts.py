r"""A1111 prompt syntax: the web UI's own documented examples, its quirks, and arbitrary text.

The expected values are A1111's documented outputs (``modules/prompt_parser.py`` docstrings and
the wiki's examples), not values computed by this package.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dumpunet.a1111_prompts import EMPHASIS_MODES, Piece, parse_emphasis, prompt_schedule


def pairs(text: str) -> list[tuple[str, float]]:
    return [(p.text, p.weight) for p in parse_emphasis(text).pieces]


# ------------------------------------------------------------------------------------- emphasis


def test_the_documented_weights():
    got = pairs("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [t for t, _ in got] == ["a ", "house", " ", "on", " a ", "hill", ", sun, ", "sky", "."]
    assert [w for _, w in got] == pytest.approx([1.0, 1.573, 1.1, 1.0, 1.1, 0.55, 1.1, 1.4641, 1.1], abs=1e-12)
    # "[on]" sits inside the outer "(": 1.1 / 1.1 is 1.0 to float rounding
    assert got[3][1] == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        ("[blurry]", [("blurry", 1 / 1.1)]),
        ("((pink hair))", [("pink hair", 1.1 * 1.1)]),
        ("(masterpiece:1.2), x", [("masterpiece", 1.2), (", x", 1.0)]),
        ("[(a:2)]", [("a", 2 / 1.1)]),
        ("a) b] c", [("a) b] c", 1.0)]),
        ("(a: 1.3)", [("a: 1.3", 1.1)]),
        ("a:1.3) b", [("a:1.3) b", 1.0)]),
        (r"a\\b \x", [("a\\b x", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_emphasis_as_a1111(text, expected):
    got = pairs(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=1e-12)


def test_break_ends_a_chunk_only_as_a_word_outside_brackets():
    assert parse_emphasis("a, BREAK b").pieces == (Piece("a,", 1.0), Piece("BREAK", 1.0, True), Piece("b", 1.0))
    assert parse_emphasis("BREAKfast BREAKS").pieces == (Piece("BREAKfast BREAKS", 1.0),)
    inside = parse_emphasis("(a BREAK b)")
    assert [p.is_break for p in inside.pieces] == [False, False, False]
    assert pairs("(a BREAK b)") == [("a", 1.1), ("BREAK", pytest.approx(-1.1)), ("b", 1.1)]
    assert inside.notes == ("BREAK at column 4 is inside brackets: A1111 reads it as the word 'BREAK'",)


def test_notes_say_what_was_taken_as_text():
    assert parse_emphasis("a) (b [c").notes == (
        "')' at column 2 closes nothing: taken as text",
        "'(' at column 4 is never closed: it applies to the end of the prompt",
        "'[' at column 7 is never closed: it applies to the end of the prompt",
    )
    assert parse_emphasis(r"a\b").notes == ("'\\' at column 2 is dropped (only ( ) [ ] \\ can be escaped)",)
    assert parse_emphasis("(a:1.2.3)").notes == ("weight '1.2.3' at column 4 is not a number: taken as text",)
    assert pairs("(a:1.2.3)") == [("a:1.2.3", pytest.approx(1.1))]
    assert parse_emphasis("(x) [y] (z:0.5)").notes == ()


def test_emphasis_none_is_the_text_itself():
    assert parse_emphasis("(a:1.2) BREAK [b]", mode="none").pieces == (Piece("(a:1.2) BREAK [b]", 1.0),)
    with pytest.raises(ValueError, match="unknown emphasis mode 'strong'"):
        parse_emphasis("a", mode="strong")
    assert EMPHASIS_MODES == ("original", "no-norm", "ignore", "none")


# --------------------------------------------------------------------------------- prompt editing

DOCUMENTED_SCHEDULES = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[i, "a" if i % 2 else "(b:1.1)"] for i in range(1, 11)]),
]


@pytest.mark.parametrize(("prompt", "expected"), DOCUMENTED_SCHEDULES)
def test_documented_schedules(prompt, expected):
    assert [list(e) for e in prompt_schedule(prompt, 10).entries] == expected


def test_the_wiki_example_at_100_steps():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert prompt_schedule(prompt, 100).entries == (
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    )


def test_steps_are_a1111s_0_based_sampler_steps():
    s = prompt_schedule("a [b:c:1] d", 10)
    assert s.per_step() == ["a b d"] * 2 + ["a c d"] * 8  # 'when' 1 still covers steps 0 and 1
    assert prompt_schedule("[a|b]", 5).per_step() == ["a", "a", "b", "a", "b"]
    assert prompt_schedule("a[b:[c:d:2]:1]e", 4).per_step() == ["abe", "abe", "ace", "ade"]
    assert s.texts == ("a b d", "a c d")


def test_alternation_keeps_the_first_part_of_each_alternative():
    s = prompt_schedule("[a (b)|c]", 3)
    assert s.entries == ((1, "a "), (2, "c"), (3, "a "))
    assert s.notes == ("alternative 'a (b)': A1111 keeps only its first part, 'a '",)
    assert prompt_schedule("[a b, c|d]", 2).entries == ((1, "a b, c"), (2, "d"))


def test_text_outside_the_grammar_is_not_scheduled():
    s = prompt_schedule("a | b [c:2]", 10)
    assert s.entries == ((10, "a | b [c:2]"),)
    assert "no prompt editing" in s.notes[0]
    assert prompt_schedule("[a:b]", 10).entries == ((10, "[a:b]"),)
    assert prompt_schedule("[a:b:c:1]", 10).entries == ((10, "[a:b:c:1]"),)
    assert prompt_schedule("a [b:-1] c", 10).entries == ((10, "a b c"),)
    assert prompt_schedule("x [a:b:30]", 10).entries == ((10, "x a"),)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        prompt_schedule("a", 0)


# ------------------------------------------------------------------------------- arbitrary text

_ALPHABET = st.sampled_from(list("ab c,.:|\\()[]\n") + ["BREAK", " BREAK ", "1", "0.5", ":2", "e", "-"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join), st.integers(1, 30))
def test_any_text_parses_without_error(text, steps):
    emphasis = parse_emphasis(text)
    assert emphasis.pieces
    assert all(p.text or len(emphasis.pieces) == 1 for p in emphasis.pieces)
    schedule = prompt_schedule(text, steps)
    ends = [e for e, _ in schedule.entries]
    assert ends == sorted(set(ends)) and ends[-1] == steps
    assert len(schedule.per_step()) == steps


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_any_unicode_text_parses(text):
    assert parse_emphasis(text).pieces
    assert prompt_schedule(text, 3).entries[-1][0] == 3


@pytest.mark.parametrize("text", ["(" * 5000 + "a" + ")" * 5000, "[(" * 3000, "[a:" * 3000, "[a|" * 3000])
def test_deep_or_long_brackets_stay_fast(text):
    start = time.perf_counter()
    prompt_schedule(text, 20)
    parse_emphasis(text[:4000])
    assert time.perf_counter() - start < 3.0

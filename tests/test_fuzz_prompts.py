"""Fuzzing the prompt grammars: layer prompts (:mod:`dumpunet.prompts`) and A1111 syntax (:mod:`dumpunet.a1111_prompts`).

Layer prompts either parse or raise a PromptSyntaxError (a SpecError for a bad block spec)
with a caret; A1111 text always parses (A1111 accepts any text), with notes for what it ignores.
"""

from __future__ import annotations

from fuzz import FUZZ, outcome, pieces, repeated
from hypothesis import given
from hypothesis import strategies as st

from dumpunet.a1111_chunks import a1111_summary, explain_a1111
from dumpunet.a1111_prompts import EMPHASIS_MODES, parse_emphasis, prompt_schedule
from dumpunet.errors import PromptSyntaxError, SpecError
from dumpunet.layouts import builtin_layout
from dumpunet.prompts import explain, parse_layer_prompt
from dumpunet.specs import SD1_BLOCKS, SDXL_BLOCKS

LAYER_WORDS = ["(~:", ":~)", "(~: ", " :~)", ";", ":", "\\;", "\\:", "\\\\", "\\(~:", "\\:~)", "_", "IN00", "M00",
               "OUT11", "IN12", "IN00-OUT11(+2)", "in02, OUT00", "a", " cute", "girl", "(", ")"]
A1111_WORDS = ["(", ")", "[", "]", ":", "|", "\\", "BREAK", " BREAK ", "a", "b ", ",", ".", "1", "0.5", ":1.2", ":-1",
               ":2", "e", "-", "[a:b:", "[a|b]", "(x:", "::", "embedding:"]


@FUZZ
@given(pieces(LAYER_WORDS, max_size=24), st.sampled_from([SD1_BLOCKS, SDXL_BLOCKS]))
def test_layer_prompts_resolve_every_block_or_say_where(text, blocks):
    lp = outcome(PromptSyntaxError, parse_layer_prompt, text)
    if isinstance(lp, PromptSyntaxError):
        return
    assert isinstance(lp.base(), str)
    table = outcome((PromptSyntaxError, SpecError), lp.resolve, blocks)
    if not isinstance(table, Exception):
        assert list(table) == list(blocks) and all(isinstance(v, str) for v in table.values())
        if "(~:" not in text and ":~)" not in text:  # no marker, not even an escaped one: byte for byte
            assert set(table.values()) == {text}


@FUZZ
@given(pieces(LAYER_WORDS, max_size=12), pieces(LAYER_WORDS, max_size=8), st.sampled_from(["sd1", "sdxl"]))
def test_explain_gives_a_table_or_one_documented_error(positive, negative, model):
    got = outcome((PromptSyntaxError, SpecError), explain, positive, negative, layout=builtin_layout(model))
    if not isinstance(got, Exception):
        assert all(isinstance(line, str) and "\n" not in line for line in got.lines())


@FUZZ
@given(pieces(A1111_WORDS, max_size=40), st.integers(1, 150), st.sampled_from(EMPHASIS_MODES))
def test_a1111_syntax_always_parses(text, steps, mode):
    assert parse_emphasis(text, mode=mode).pieces
    schedule = prompt_schedule(text, steps)
    assert schedule.entries[-1][0] == steps
    explained = explain_a1111(text, steps, emphasis=mode)
    summary = a1111_summary(explained)
    assert summary is None or "\n" not in summary


@FUZZ
@given(st.sampled_from(["(", "[", "(~:", "[a:", "[a|", "\\"]).flatmap(lambda f: repeated(f, up_to=10_000)))
def test_deep_or_long_markup_is_handled_without_recursion_errors(text):
    # up to 10,000 repeats: every closing or unclosed A1111 bracket rescales the rest of the
    # prompt (O(brackets x pieces)); that is done in numpy, under the fuzz deadline.
    outcome(PromptSyntaxError, parse_layer_prompt, text)
    prompt_schedule(text, 20)
    parse_emphasis(text)

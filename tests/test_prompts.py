r"""Per-block prompts: grammar, precedence, escapes, caret errors, warnings and ``dumpunet explain``."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from dumpunet.cli import main
from dumpunet.errors import DumpUnetError, PromptSyntaxError
from dumpunet.layouts import BUILTIN_LAYOUTS, BlockLayout, builtin_layout
from dumpunet.prompts import LayerPrompt, PromptEntry, distinct_prompts, explain, parse_layer_prompt
from dumpunet.specs import SD1_BLOCKS, SDXL_BLOCKS, parse_blocks

SD1 = builtin_layout("sd1")
SDXL = builtin_layout("sdxl")
SD1_NO_XATTN = ["IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"]
SDXL_NO_XATTN = ["IN00", "IN01", "IN02", "IN03", "IN06", "OUT06", "OUT07", "OUT08"]


def table(default: str = "", blocks=SD1_BLOCKS, **given_: str) -> dict[str, str]:
    """A full block -> prompt table: ``default`` everywhere except the named blocks."""
    assert set(given_) <= set(blocks)
    return {b: given_.get(b, default) for b in blocks}


def resolve(text: str, blocks=SD1_BLOCKS, aliases=None) -> dict[str, str]:
    return parse_layer_prompt(text).resolve(blocks, aliases)


# ----------------------------------------------------------------------------- meaning


def test_readme_example_gives_cute_everywhere_but_m00():
    got = resolve("a (~: IN00-OUT11: cute ; M00: excellent :~) girl")
    assert got == table("a cute girl", M00="a excellent girl")
    assert list(got) == list(SD1_BLOCKS)  # block order


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(~: IN00: A ; IN01: B :~)", table(IN00="A", IN01="B")),
        ("(~: IN00: A ; IN01: B ; IN02: C :~)", table(IN00="A", IN01="B", IN02="C")),
        ("(~: IN00: A ; IN01: B ; IN02: C ; _ : D :~)", table("D", IN00="A", IN01="B", IN02="C")),
        ("(~: IN00,IN01: A ; M00 : B :~)", table(IN00="A", IN01="A", M00="B")),
        ("(~: IN00-OUT11: A ; M00 : B :~)", table("A", M00="B")),
    ],
    ids=["1", "2", "3", "4", "5"],
)
def test_the_original_tools_five_examples(text, expected):
    assert resolve(text) == expected


def test_later_entries_win_and_rest_is_lowest_whatever_its_place():
    assert resolve("(~: _: R; IN00-IN02: A; IN01: B :~)") == table("R", IN00="A", IN01="B", IN02="A")
    assert resolve("(~: IN01: B; IN00-IN02: A :~)") == table(IN00="A", IN01="A", IN02="A")
    assert resolve("(~: _: R1; IN00: A; _: R2 :~)") == table("R2", IN00="A")  # the later '_' wins


def test_range_steps_and_case_follow_the_spec_grammar():
    got = resolve("(~: in00-out11(+2): x :~)")
    assert got == {b: ("x" if b in parse_blocks("IN00-OUT11(+2)", SD1_BLOCKS) else "") for b in SD1_BLOCKS}


def test_several_groups_resolve_independently():
    got = resolve("a (~: IN00: cute :~) girl, (~: IN00-OUT11: pink; M00: blue :~) hair")
    assert got == table(
        "a  girl, pink hair", IN00="a cute girl, pink hair", M00="a  girl, blue hair"
    )


def test_a_prompt_without_groups_is_the_same_string_everywhere():
    lp = parse_layer_prompt("a cute girl, pink hair")
    assert not lp.has_groups and lp.base() == "a cute girl, pink hair"
    assert resolve("a cute girl, pink hair") == table("a cute girl, pink hair")


def test_base_erases_every_group():
    assert parse_layer_prompt("a (~: M00: cute :~) girl (~: _: x :~)!").base() == "a  girl !"


def test_distinct_prompts_lists_blocks_in_order():
    got = distinct_prompts(resolve("a (~: IN00-OUT11: cute; M00: excellent :~) girl"))
    assert got == {"a cute girl": [b for b in SD1_BLOCKS if b != "M00"], "a excellent girl": ["M00"]}


def test_parse_keeps_entries_and_their_source_positions():
    text = "a (~: IN00-OUT11: cute ; M00: excellent :~) girl"
    lp = parse_layer_prompt(text)
    assert lp == LayerPrompt(
        text,
        ("a ", " girl"),
        (lp.groups[0],),
    )
    g = lp.groups[0]
    assert (g.start, g.end) == (2, 43) and text[g.start : g.end] == "(~: IN00-OUT11: cute ; M00: excellent :~)"
    assert g.entries == (PromptEntry("IN00-OUT11", "cute", 6, 18), PromptEntry("M00", "excellent", 25, 30))
    assert text[25:28] == "M00" and text[30:39] == "excellent"


# ----------------------------------------------------------------------------- the bit-identity invariant


@pytest.mark.parametrize(
    "text",
    [
        "a (~: _: cute :~) girl",
        "a (~:_:cute:~) girl",
        "a (~: IN00-OUT11: cute :~) girl",
        "a (~: IN00-OUT11: cute ; M00: cute :~) girl",
        "a (~: IN00-IN11: cute; M00-OUT11: cute; :~) girl",
        "a (~: IN00: x; _: cute; IN00: cute :~) girl",
        "a (~:\tM00 :\n cute\n;  _ :cute   :~) girl",
    ],
)
def test_a_group_that_gives_every_block_the_outer_text_is_exactly_the_plain_prompt(text):
    got = resolve(text)
    assert set(got.values()) == {"a cute girl"}
    assert distinct_prompts(got) == {"a cute girl": list(SD1_BLOCKS)}


_PLAIN = st.text(alphabet=st.sampled_from(list("ab (~:)\\;_ \n")), max_size=40).filter(
    lambda s: "(~:" not in s and ":~)" not in s
)


@given(_PLAIN)
def test_text_without_markers_is_used_byte_for_byte(text):
    lp = parse_layer_prompt(text)
    assert not lp.has_groups and lp.base() == text
    assert set(lp.resolve(SDXL_BLOCKS).values()) == {text}


_SPECS = st.sampled_from(["_", "IN00", "M00", "OUT11", "IN00-OUT11", "IN05-OUT02(+3)", "IN01, OUT00-OUT03", "in02"])
_WORDS = st.text(alphabet=st.sampled_from(list("xyz ,():")), max_size=8)


@given(st.lists(st.tuples(_SPECS, _WORDS), min_size=1, max_size=6), st.booleans())
def test_resolution_matches_a_direct_reading_of_the_rules(entries, trailing):
    text = "<(~: " + "; ".join(f"{s}: {w}" for s, w in entries) + ("; " if trailing else "") + " :~)>"
    expected = {}
    for b in SD1_BLOCKS:
        named = [w for s, w in entries if s != "_" and b in parse_blocks(s, SD1_BLOCKS)]
        rest = [w for s, w in entries if s == "_"]
        expected[b] = "<" + (named[-1] if named else rest[-1] if rest else "").strip() + ">"
    assert resolve(text) == expected


# ----------------------------------------------------------------------------- spacing and escapes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a (~:IN00:A:~) b", table("a  b", IN00="a A b")),
        ("(~:   IN00   :   x  y   ;   M00 : z   :~)", table(IN00="x  y", M00="z")),
        ("(~:\n\tIN00\n:\tx\n:~)", table(IN00="x")),
        ("(~: IN00: x; :~)", table(IN00="x")),  # a trailing ';' is fine
        ("(~: IN00: ; _: y :~)", table("y", IN00="")),  # empty text
        ("(~: IN00: (cute:1.2), 2:1 :~)", table(IN00="(cute:1.2), 2:1")),  # ':' inside the text
        ("(~: IN00: x::~)", table(IN00="x:")),
    ],
)
def test_whitespace_rules(text, expected):
    assert resolve(text) == expected


@pytest.mark.parametrize(
    ("text", "expected_in00"),
    [
        (r"(~: IN00: a\;b :~)", "a;b"),
        (r"(~: IN00: a\:~) b :~)", "a:~) b"),
        (r"(~: IN00: a\: b :~)", "a: b"),
        (r"(~: IN00: a\\ :~)", "a\\"),
        (r"(~: IN00: a\\:~)", "a\\"),  # an escaped backslash, then the real ':~)'
        (r"(~: IN00: a \(~: b :~)", "a (~: b"),
        (r"(~: IN00: \(cute\) c:\d :~)", r"\(cute\) c:\d"),  # other backslashes stay
        (r"(~: IN00: a\ :~)", "a\\"),
    ],
)
def test_escapes_inside_an_entry(text, expected_in00):
    assert resolve(text)["IN00"] == expected_in00
    assert resolve(text)["IN01"] == ""


def test_escapes_outside_groups_are_only_the_markers():
    assert parse_layer_prompt(r"a \(~: b \:~) c").resolve(["IN00"]) == {"IN00": "a (~: b :~) c"}
    plain = r"a \(cute\), \\ x\;y\:"
    assert parse_layer_prompt(plain).resolve(["IN00"]) == {"IN00": plain}
    # A backslash before a real group is an escape of the group marker.
    assert not parse_layer_prompt(r"a \\(~: b").has_groups


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message", "pos", "length"),
    [
        ("a (~: IN00: b", "unclosed group: '(~:' without a matching ':~)'", 2, 3),
        ("a (~: IN00", "unclosed group: '(~:' without a matching ':~)'", 2, 3),
        ("a (~: IN00: b ; M00", "unclosed group: '(~:' without a matching ':~)'", 2, 3),
        ("(~: IN00 ; M00: x :~)", "missing ':' after the block spec 'IN00'", 8, 1),
        ("(~: IN00 :~)", "missing ':' after the block spec 'IN00'", 8, 1),
        ("(~: IN00 x; M00: y :~)", "missing ':' after the block spec 'IN00 x'", 10, 1),
        ("(~: : A :~)", "empty block spec before ':' (write '_' for every other block)", 4, 1),
        ("(~: IN00: a ; : b :~)", "empty block spec before ':' (write '_' for every other block)", 14, 1),
        ("a :~) b", "stray ':~)' outside a group (write '\\:~)' for the literal text)", 2, 3),
        ("(~: IN00: a :~) :~)", "stray ':~)' outside a group (write '\\:~)' for the literal text)", 16, 3),
        ("(~: IN00: a (~: M00: b :~) :~)",
         "'(~:' inside a group (groups do not nest; write '\\(~:' for the literal text)", 12, 3),
        ("(~: IN00 (~: M00: b :~)",
         "'(~:' inside a group (groups do not nest; write '\\(~:' for the literal text)", 9, 3),
        ("(~: IN00: a;; M00: b :~)", "empty entry (write 'block-spec: prompt' before ';')", 12, 1),
        ("(~: ; IN00: a :~)", "empty entry (write 'block-spec: prompt' before ';')", 4, 1),
        ("x (~: :~)", "empty group (write at least one 'block-spec: prompt' entry)", 2, 7),
        ("(~::~)", "empty group (write at least one 'block-spec: prompt' entry)", 0, 6),
        ("(~: IN00, _: a :~)", "'_' (every other block) must be the whole block spec of its entry", 10, 1),
    ],
)
def test_syntax_errors_point_at_the_problem(text, message, pos, length):
    with pytest.raises(PromptSyntaxError) as info:
        parse_layer_prompt(text)
    err = info.value
    assert (err.message, err.text, err.pos, err.length) == (message, text, pos, length)
    assert str(err) == f"bad layer prompt: {message}\n  {text.replace(chr(10), ' ')}\n  {' ' * pos}{'^' * length}"


@pytest.mark.parametrize(
    ("text", "message", "pos", "length"),
    [
        ("a (~: IN12: x :~)", "unknown block 'IN12' (this model has IN00..OUT11)", 6, 4),
        ("a (~: IN00-IN12(+2): x :~)", "unknown block 'IN12' (this model has IN00..OUT11)", 11, 4),
        ("(~: M00: y; IN00-: x :~)", "expected a block name after 'IN00-', got the end", 17, 1),
        ("(~:  OUT00-IN00 : x :~)", "range OUT00-IN00 runs backwards (write IN00-OUT00)", 5, 10),
        ("(~: IN00 M00: x :~)", "expected ',' or the end, got 'M00'", 9, 1),
        ("(~: IN00#: x :~)", "unexpected character '#'", 8, 1),
    ],
)
def test_block_spec_errors_point_into_the_original_prompt(text, message, pos, length):
    lp = parse_layer_prompt(text)  # the structure is fine; the blocks are checked against a model
    with pytest.raises(PromptSyntaxError) as info:
        lp.resolve(SD1_BLOCKS)
    err = info.value
    assert (err.message, err.text, err.pos, err.length) == (message, text, pos, length)
    assert str(err).splitlines()[1:] == [f"  {text}", f"  {' ' * pos}{'^' * length}"]


def test_prompt_syntax_error_is_a_value_error_and_a_dumpunet_error():
    with pytest.raises(ValueError):
        parse_layer_prompt("(~:")
    with pytest.raises(DumpUnetError):
        resolve("(~: IN99: x :~)")


# ----------------------------------------------------------------------------- models, aliases


def test_sdxl_names_and_sd1_names_on_sdxl():
    assert resolve("a (~: IN00-OUT08: cute; M00: excellent :~) girl", SDXL_BLOCKS) == table(
        "a cute girl", SDXL_BLOCKS, M00="a excellent girl"
    )
    with pytest.raises(PromptSyntaxError, match=r"unknown block 'OUT11' \(this model has IN00\.\.OUT08\)") as info:
        resolve("a (~: IN00-OUT11: cute :~) girl", SDXL_BLOCKS)
    assert (info.value.pos, info.value.length) == (11, 5)


def test_module_paths_are_aliases_of_blocks():
    text = "(~: down_blocks.0.attentions.0: A; MID_BLOCK: B; up_blocks.0.upsamplers.0-OUT03: C :~)"
    assert resolve(text, SD1.blocks, SD1.aliases) == table(IN01="A", M00="B", OUT02="C", OUT03="C")
    assert resolve("(~: down_blocks.1.attentions.0: A :~)", SDXL.blocks, SDXL.aliases) == table(
        blocks=SDXL_BLOCKS, IN04="A"
    )
    with pytest.raises(PromptSyntaxError, match="unknown block 'down_blocks.0.attentions.0'"):
        resolve("(~: down_blocks.0.attentions.0: A :~)", SDXL.blocks, SDXL.aliases)  # SDXL: no attention there


def test_builtin_layouts():
    assert set(BUILTIN_LAYOUTS) == {"sd1", "sd2", "tiny-sd1", "sdxl", "tiny-sdxl"}
    for name in ("sd1", "sd2", "tiny-sd1"):
        lay = builtin_layout(name)
        assert lay.blocks == SD1_BLOCKS
        assert [b for b in lay.blocks if b not in lay.cross_attention] == SD1_NO_XATTN
    for name in ("sdxl", "tiny-sdxl"):
        lay = builtin_layout(name)
        assert lay.blocks == SDXL_BLOCKS
        assert [b for b in lay.blocks if b not in lay.cross_attention] == SDXL_NO_XATTN
    assert SD1.modules["OUT02"] == ("up_blocks.0.resnets.2", "up_blocks.0.upsamplers.0")
    assert SD1.modules["OUT11"] == ("up_blocks.3.resnets.2", "up_blocks.3.attentions.2")
    assert SDXL.modules["OUT05"] == ("up_blocks.1.resnets.2", "up_blocks.1.attentions.2", "up_blocks.1.upsamplers.0")
    assert SDXL.modules["IN03"] == ("down_blocks.0.downsamplers.0",)
    assert SDXL.aliases["up_blocks.2.resnets.2"] == "OUT08"
    with pytest.raises(DumpUnetError, match=r"no built-in block layout 'sd3' \(choose from sd1, sd2,"):
        builtin_layout("sd3")


# ----------------------------------------------------------------------------- warnings


def test_unmatched_entries():
    lp = parse_layer_prompt("(~: IN00: A; IN00-IN02: B; _: C :~) (~: M00: D; _: E; _: F :~) (~: _: G :~)")
    assert [(e.spec, e.text) for e in lp.unmatched_entries(SD1_BLOCKS)] == [("IN00", "A"), ("_", "E")]
    lp = parse_layer_prompt("(~: IN00-OUT11: A; _: B :~)")
    assert [(e.spec, e.text) for e in lp.unmatched_entries(SD1_BLOCKS)] == [("_", "B")]
    assert parse_layer_prompt("(~: IN00: A; M00: B; _: C :~)").unmatched_entries(SD1_BLOCKS) == []


def test_explain_warns_about_text_that_only_reaches_blocks_without_cross_attention():
    ex = explain("a (~: IN00, IN03: cute; OUT10: x :~) girl", "b (~: IN01-IN03: bad :~)", layout=SD1)
    assert ex.warnings == (
        'positive prompt: "a cute girl" goes only to IN00, IN03, which have no cross-attention: the text has no effect',
    )
    assert ex.negative == table("b ", IN01="b bad", IN02="b bad", IN03="b bad")
    # One text that also reaches a cross-attention block acts; an all-range layer prompt warns of nothing.
    assert explain("a (~: IN00-OUT11: cute; M00: excellent :~) girl", layout=SD1).warnings == ()
    assert explain("(~: IN00: x :~)", "(~: OUT06: y :~)", layout=SDXL).warnings == (
        'positive prompt: "x" goes only to IN00, which has no cross-attention: the text has no effect',
        'negative prompt: "y" goes only to OUT06, which has no cross-attention: the text has no effect',
    )
    assert explain("(~: IN00: x :~)", "(~: OUT05: y :~)", layout=SDXL).warnings[1:] == ()


def test_explain_warns_about_unmatched_entries_in_both_prompts():
    ex = explain("(~: M00: A; IN00-OUT11: B :~)", "(~: IN00-OUT11: n; _: m; :~)", layout=SD1)
    assert ex.warnings == (
        'positive prompt: entry "M00: A" (column 5) applies to no block: '
        "later entries override it on every block it names",
        'negative prompt: entry "_: m" (column 20) applies to no block: the other entries name every block',
    )
    ex = explain("(~: IN01: A; _: B; _: C :~)", layout=SD1)
    assert ex.warnings == (
        'positive prompt: entry "_: B" (column 14) applies to no block: a later \'_\' entry replaces it',
    )


def test_explain_names_the_negative_prompt_in_its_errors():
    with pytest.raises(PromptSyntaxError) as info:
        explain("fine", "x (~: IN00", layout=SD1)
    assert str(info.value) == (
        "bad layer prompt: unclosed group: '(~:' without a matching ':~)' (in the negative prompt)\n"
        "  x (~: IN00\n"
        "    ^^^"
    )


# ----------------------------------------------------------------------------- CLI


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps result.stderr apart anyway


README_TABLE = """\
block  cross-attn  prompt
IN00   no          "a cute girl"
IN01   yes         "a cute girl"
IN02   yes         "a cute girl"
IN03   no          "a cute girl"
IN04   yes         "a cute girl"
IN05   yes         "a cute girl"
IN06   no          "a cute girl"
IN07   yes         "a cute girl"
IN08   yes         "a cute girl"
IN09   no          "a cute girl"
IN10   no          "a cute girl"
IN11   no          "a cute girl"
M00    yes         "a excellent girl"
OUT00  no          "a cute girl"
OUT01  no          "a cute girl"
OUT02  no          "a cute girl"
OUT03  yes         "a cute girl"
OUT04  yes         "a cute girl"
OUT05  yes         "a cute girl"
OUT06  yes         "a cute girl"
OUT07  yes         "a cute girl"
OUT08  yes         "a cute girl"
OUT09  yes         "a cute girl"
OUT10  yes         "a cute girl"
OUT11  yes         "a cute girl"
"""


def test_cli_explain_prints_the_table():
    res = _runner().invoke(main, ["explain", "a (~: IN00-OUT11: cute; M00: excellent :~) girl"])
    assert res.exit_code == 0, res.output
    assert res.stdout == README_TABLE
    assert res.stderr == ""


def test_cli_explain_negative_column_and_sdxl():
    res = _runner().invoke(main, ["explain", "a (~: M00: x :~)", "--negative-prompt", "b", "--model", "tiny-sdxl"])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0] == "block  cross-attn  prompt  negative"
    assert lines[1] == 'IN00   no          "a "    "b"'
    assert lines[10] == 'M00    yes         "a x"   "b"'
    assert len(lines) == 1 + 19


def test_cli_explain_json():
    res = _runner().invoke(
        main, ["explain", "a (~: IN00-OUT11: cute; M00: excellent :~) girl", "--negative-prompt", "(~: _: ugly :~)", "--json"]
    )
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert {k: doc[k] for k in ("positive", "negative")} == {
        "positive": table("a cute girl", M00="a excellent girl"),
        "negative": table("ugly"),
    }
    # A1111 syntax is read outside the groups: their brackets and colons are no emphasis
    assert (doc["a1111"]["positive"]["prompt"], doc["a1111"]["positive"]["notes"]) == ("a  girl", [])
    assert (doc["a1111"]["negative"]["prompt"], doc["a1111"]["negative"]["notes"]) == ("", [])


def test_cli_explain_warnings_go_to_stderr():
    res = _runner().invoke(main, ["explain", "a (~: IN00: cute; IN00-OUT11: x :~) girl", "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["positive"] == table("a x girl")
    assert res.stderr == (
        'warning: positive prompt: entry "IN00: cute" (column 7) applies to no block: '
        "later entries override it on every block it names\n"
    )
    res = _runner().invoke(main, ["explain", "a (~: OUT00-OUT02: cute :~) girl"])
    assert res.stderr == (
        'warning: positive prompt: "a cute girl" goes only to OUT00, OUT01, OUT02, which have no cross-attention: '
        "the text has no effect\n"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["a (~: IN00-OUT11: cute :~) girl", "--model", "sdxl"],
         "Error: bad layer prompt: unknown block 'OUT11' (this model has IN00..OUT08)\n"
         "  a (~: IN00-OUT11: cute :~) girl\n"
         "             ^^^^^\n"),
        (["ok", "--negative-prompt", "a :~)"],
         "Error: bad layer prompt: stray ':~)' outside a group (write '\\:~)' for the literal text) "
         "(in the negative prompt)\n"
         "  a :~)\n"
         "    ^^^\n"),
    ],
)
def test_cli_explain_errors_show_the_caret_without_traceback(args, expected):
    res = _runner().invoke(main, ["explain", *args])
    assert res.exit_code == 1
    assert res.stdout == ""
    assert res.stderr == expected
    assert "Traceback" not in res.output


def test_cli_explain_uses_a_stores_block_table(tmp_path):
    from test_store import write_store

    write_store(tmp_path / "s.zarr")  # blocks IN00 (conv_in) and IN01 (with cross-attention)
    args = ["explain", "(~: down_blocks.0.attentions.0: a; _: b :~)", "--store", str(tmp_path / "s.zarr")]
    res = _runner().invoke(main, args)
    assert res.exit_code == 0
    assert res.stdout == 'block  cross-attn  prompt\nIN00   no          "b"\nIN01   yes         "a"\n'
    assert res.stderr == (
        'warning: positive prompt: "b" goes only to IN00, which has no cross-attention: the text has no effect\n'
    )
    res = _runner().invoke(main, [*args, "--model", "sd1"])
    assert res.exit_code == 2 and "give --model or --store, not both" in res.stderr
    res = _runner().invoke(main, ["explain", "x", "--store", str(tmp_path / "missing.zarr")])
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_cli_explain_help():
    res = _runner().invoke(main, ["explain", "--help"])
    assert res.exit_code == 0
    assert 'dumpunet explain "a (~: IN00-OUT11: cute; M00: excellent :~) girl"' in res.stdout
    for option in ("--negative-prompt", "--model", "--store", "--json"):
        assert option in res.stdout


def test_from_block_table_reads_rows():
    from test_store import BLOCKS

    lay = BlockLayout.from_block_table("s", BLOCKS)
    assert lay.blocks == ("IN00", "IN01") and lay.cross_attention == {"IN01"}
    assert lay.aliases == {"conv_in": "IN00", "down_blocks.0.resnets.0": "IN01", "down_blocks.0.attentions.0": "IN01"}

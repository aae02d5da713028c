"""The CLI's shared option plumbing: old spellings that still work (and warn), choices listed once."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dumpunet.cli import main

PROMPT = "a (~: IN00-OUT11: cute :~) [red:blue:2] girl"


def _explain(*args):
    return CliRunner().invoke(main, ["explain", PROMPT, "--json", *args])


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        (["--negative", "ugly"], ["--negative-prompt", "ugly"],
         "warning: explain --negative is deprecated and goes in dumpunet 0.3: write --negative-prompt"),
        (["--steps", "4"], ["--sampling-steps", "4"],
         "warning: explain --steps is deprecated and goes in dumpunet 0.3: write --sampling-steps"),
    ],
)
def test_an_old_spelling_of_explain_still_works_and_says_the_new_one(old, new, line):
    then, now = _explain(*old), _explain(*new)
    assert then.exit_code == 0 and now.exit_code == 0, then.output + now.output
    assert then.stderr.splitlines() == [line]
    assert now.stderr == ""
    assert json.loads(then.stdout) == json.loads(now.stdout) != json.loads(_explain().stdout)


def test_old_and_new_spelling_together_is_a_usage_error():
    res = _explain("--negative", "a", "--negative-prompt", "b")
    assert res.exit_code == 2
    assert "Error: --negative is the old spelling of --negative-prompt; give --negative-prompt only" in res.output


def test_old_spellings_are_hidden_from_help():
    text = CliRunner().invoke(main, ["explain", "--help"]).output
    assert "--negative-prompt" in text and "--sampling-steps" in text
    assert "--negative " not in text and "--steps" not in text


@pytest.mark.parametrize("command", ["render", "diff", "attention"])
def test_method_and_transform_list_each_choice_once_in_one_case_with_the_default_among_them(command):
    text = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
    for flag in ("--method", "--transform"):
        listed = text.split(f"{flag} [", 1)[1].split("]", 1)[0].split("|")
        assert len(listed) == len(set(listed)) and all(c == c.lower() for c in listed), listed
        default = text.split(f"{flag} [", 1)[1].split("[default: ", 1)[1].split("]", 1)[0]
        assert default in listed, (default, listed)


@pytest.mark.parametrize(("given", "meant"), [("Auto [0,1]", "auto01"), ("AUTO[-1,1]", "auto11"), ("Sigmoid", "sigmoid")])
def test_the_originals_transform_names_are_accepted_though_not_listed(given, meant):
    from dumpunet.cli_options import click_option
    from dumpunet.analyzer.color.spec import ColorSpec
    from dumpunet.options import options_of
    import click

    spec = next(o for o in options_of(ColorSpec) if o.name == "transform")

    @click.command()
    @click_option(spec)
    def show(transform):
        click.echo(ColorSpec(transform=transform).transform)

    res = CliRunner().invoke(show, ["--transform", given])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == meant

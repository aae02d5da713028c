"""One vocabulary: --quiet, --json and --jobs on every command that writes files or takes long.

The tree walk below fails for a command nobody has classified, so a new command cannot forget
them; the options themselves come from one value each (:data:`dumpunet.cli_options.QUIET`,
``JOBS``, ``AS_JSON``), which the walk checks by comparing the help texts.
"""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from synthetic_stores import make_store

from dumpunet.cli import main
from dumpunet.cli_options import AS_JSON, JOBS, QUIET

WRITES_OR_TAKES_LONG = {"record", "sweep", "render", "export", "diff", "attention", "heatmap", "stats", "copy", "view",
                        "validate"}
"""Commands that write files (or a store), or that can run for minutes: --quiet and --json."""

QUICK_READERS = {"info": "reads a store's metadata and prints it", "explain": "parses a prompt and prints it"}
"""Commands that only print, quickly: --json only."""

NO_JOBS = {
    "record": "one sampling loop on torch's device; torch sets its own threads",
    "sweep": "one sampling loop per run, one after another, on torch's device",
    "copy": "copies file by file through fsspec; not parallel yet",
    "validate": "checks the chunk files one after another; not parallel yet",
}
"""Commands of WRITES_OR_TAKES_LONG without --jobs, each with the reason."""


@pytest.fixture(scope="module")
def girl_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("vocabulary") / "girl.zarr")


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[prefix + name] = command
    return found


COMMANDS = _commands(main)


def _option(command: click.Command, flag: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and flag in p.opts and not p.hidden), None)


def test_every_command_is_classified():
    unknown = set(COMMANDS) - WRITES_OR_TAKES_LONG - set(QUICK_READERS)
    assert not unknown, f"classify the new command(s) {sorted(unknown)} in tests/test_cli_vocabulary.py"
    assert not (set(NO_JOBS) - WRITES_OR_TAKES_LONG)
    assert {"record", "render", "export", "attention", "heatmap", "view"} <= set(COMMANDS)  # the walk finds them


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_quiet_json_and_jobs_where_they_belong_each_from_its_one_value(name):
    command = COMMANDS[name]
    as_json = _option(command, "--json")
    assert as_json is not None and as_json.is_flag and as_json.name == "as_json", f"{name} has no --json"
    before, after = AS_JSON.help.split("{what}")
    assert as_json.help.startswith(before) and as_json.help.endswith(after) and len(as_json.help) > len(before + after)
    quiet, jobs = _option(command, "--quiet"), _option(command, "--jobs")
    if name in WRITES_OR_TAKES_LONG:
        assert quiet is not None, f"{name} writes files or takes long: it needs --quiet"
        assert quiet.is_flag and quiet.name == "quiet" and quiet.help == QUIET.help
        if name in NO_JOBS:
            assert jobs is None, f"{name} has --jobs now: drop it from NO_JOBS"
        else:
            assert jobs is not None, f"{name} writes files or takes long: it needs --jobs (or a reason in NO_JOBS)"
            assert jobs.name == "jobs" and jobs.help == JOBS.help and jobs.default is None
            assert isinstance(jobs.type, click.IntRange) and jobs.type.min == 1
    else:
        assert quiet is None and jobs is None, f"{name} only prints: it takes --json only"


@pytest.mark.parametrize("name", sorted(n for n in WRITES_OR_TAKES_LONG if n not in NO_JOBS))
def test_jobs_refuses_zero(name):
    res = CliRunner().invoke(main, [*name.split(), "--jobs", "0"])
    assert res.exit_code == 2 and "--jobs" in res.output and "0 is not in the range x>=1" in res.output, res.output


def test_stats_quiet_prints_nothing_and_json_is_the_manifest(girl_store, tmp_path):
    loud = CliRunner().invoke(main, ["stats", str(girl_store), "--blocks", "OUT11", "--steps", "20", "--out",
                                     str(tmp_path / "a")])
    assert loud.exit_code == 0 and loud.stderr.startswith("wrote stats.csv"), loud.output
    quiet = CliRunner().invoke(main, ["stats", str(girl_store), "--blocks", "OUT11", "--steps", "20", "--out",
                                      str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output
    assert (tmp_path / "b" / "stats.csv").read_bytes() == (tmp_path / "a" / "stats.csv").read_bytes()
    both = CliRunner().invoke(main, ["stats", str(girl_store), "--blocks", "OUT11", "--steps", "20", "--out",
                                     str(tmp_path / "c"), "--quiet", "--json"])
    assert both.stderr == "" and [e["file"] for e in json.loads(both.stdout)] == ["stats.csv"]


def test_validate_quiet_prints_problems_only(girl_store, tmp_path):
    import shutil

    ok = CliRunner().invoke(main, ["validate", str(girl_store), "--quiet"])
    assert (ok.exit_code, ok.output) == (0, "")
    assert CliRunner().invoke(main, ["validate", str(girl_store)]).output.endswith(": ok\n")
    broken = tmp_path / "broken.zarr"
    shutil.copytree(girl_store, broken)
    chunk = next(p for p in sorted((broken / "runs").rglob("c*")) if p.is_file() and "blocks" in p.parts)
    chunk.unlink()
    bad = CliRunner().invoke(main, ["validate", str(broken), "--quiet"])
    assert bad.exit_code == 1
    assert [line.split(":")[0] for line in bad.stdout.splitlines()] == ["problem"] * len(bad.stdout.splitlines()) != []
    assert "is not sound" in bad.stderr


def test_view_jobs_goes_with_export(girl_store):
    res = CliRunner().invoke(main, ["view", str(girl_store), "--jobs", "2", "--no-browser"])
    assert res.exit_code == 2 and "--jobs and --json go with --export" in res.output

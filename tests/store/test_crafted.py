"""The crafted-store corpus (issue 13): validate reports every kind of damage, no command crashes or hangs.

Each kind of :mod:`crafted` is applied to a copy of one tiny-sd1 recording. ``validate`` must
exit 1 naming the damaged array or attribute; every reading command must exit 0 or 1 with one
``Error:`` line (never a traceback), within a watchdog's time; those that read the damaged part
must exit 1 and name it (never a silent fill-value map or an outside file's bytes).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner, Result
from crafted import COMMANDS, KINDS, Damage, craft, record_base

from dumpunet.cli import main

pytestmark = pytest.mark.recorder

WATCHDOG_S = 120
"""Far above what any command takes on the tiny store; only a hang reaches it."""


class Hang(BaseException):
    """Raised by the watchdog (a BaseException, so CliRunner does not swallow it)."""


@contextmanager
def watchdog(what: str) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hang(f"{what} still running after {WATCHDOG_S} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(WATCHDOG_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def invoke(args: list[str]) -> Result:
    with watchdog(" ".join(args[:2])):
        return CliRunner().invoke(main, args)


def one_line_error(res: Result) -> str:
    """The ``Error:`` line a clean failure ends with; fails the test on a traceback."""
    assert res.exception is None or isinstance(res.exception, SystemExit), \
        f"traceback: {type(res.exception).__name__}: {res.exception}"
    assert "Traceback" not in res.output
    last = res.output.strip().splitlines()[-1] if res.output.strip() else ""
    if res.exit_code != 0:
        assert res.exit_code == 1 and last.startswith("Error: "), res.output
    return last


@pytest.fixture(scope="session")
def base_store(tmp_path_factory) -> Path:
    return record_base(tmp_path_factory.mktemp("crafted") / "base.zarr")


def _args(name: str, store: Path, out: Path) -> list[str]:
    return [a.format(store=store, out=out / name) for a in COMMANDS[name]]


def test_the_undamaged_base_validates_and_every_command_reads_it(base_store, tmp_path):
    res = invoke(["validate", str(base_store)])
    assert res.exit_code == 0 and res.output.strip().endswith(": ok"), res.output
    for name in COMMANDS:
        res = invoke(_args(name, base_store, tmp_path))
        assert res.exit_code == 0, (name, res.output)


def test_the_corpus_holds_forty_kinds_with_distinct_names():
    assert len(KINDS) >= 40 and len({d.name for d in KINDS}) == len(KINDS)


@pytest.mark.parametrize("damage", KINDS, ids=lambda d: d.name)
def test_crafted_store_is_reported_and_refused_in_one_line(base_store, tmp_path, damage: Damage):
    store = craft(base_store, tmp_path / "in" / "s.zarr", damage)
    res = invoke(["validate", str(store)])
    one_line_error(res)
    assert res.exit_code == 1 and damage.needle in res.output, res.output
    for name in COMMANDS:
        res = invoke(_args(name, store, tmp_path / "out"))
        last = one_line_error(res)
        if name in damage.reads:
            assert res.exit_code == 1, f"{name} accepted the damage silently: {res.output}"
            assert damage.needle in last, f"{name}: {last}"


@pytest.mark.parametrize("name", ["chunk-truncated", "chunk-too-long"])
def test_validate_quick_skips_the_size_scan_only(base_store, tmp_path, name):
    damage = next(d for d in KINDS if d.name == name)
    store = craft(base_store, tmp_path / "in" / "s.zarr", damage)
    assert invoke(["validate", "--quick", str(store)]).exit_code == 0
    linked = craft(base_store, tmp_path / "in2" / "s.zarr", next(d for d in KINDS if d.name == "chunk-link-to-dev-zero"))
    res = invoke(["validate", "--quick", str(linked)])
    assert res.exit_code == 1 and "is a symbolic link" in res.output

"""Waiting on events, not on time: tests that drive a second process use :func:`wait_until`.

A fixed sleep or a short deadline fails on a loaded machine (the recording "did not start in
time" after 120 s, and passed alone in 29 s). Here the condition is the event itself (a file,
an array's length, a line on stdout); the timeout is only a backstop against a hang, and a
child that exits first ends the wait at once with its output.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

BACKSTOP = 900.0
"""Seconds before a wait gives up: far beyond any healthy run, only there so a hang ends."""


def wait_until(condition: Callable[[], bool], *, proc: subprocess.Popen | None = None, what: str = "the event",
               timeout: float = BACKSTOP, poll: float = 0.02) -> None:
    """Return once ``condition()`` is true; fail if ``proc`` exits first or ``timeout`` passes.

    ``condition`` may raise while the thing it looks at is being created; that counts as false.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001, S110 - half-written files, arrays being created
            pass
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(poll)

"""Ctrl-C in the middle of a prompt list, in-process: the resume tests of ``record``/``sweep --prompts``."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def interrupt_run(monkeypatch: pytest.MonkeyPatch, name: str, *, step: int = 1) -> Callable[[], None]:
    """Make the recorder raise KeyboardInterrupt once run ``name`` has completed step ``step``; return the undo."""
    from dumpunet.recorder import job as recording

    record_run = recording.record_run

    def cut(job, writer, run, kwargs, *, on_step=None, **rest):
        def on(n):
            on_step(n)
            if run.name == name and n == step:
                raise KeyboardInterrupt  # as Ctrl-C right after that step

        return record_run(job, writer, run, kwargs, on_step=on, **rest)

    monkeypatch.setattr(recording, "record_run", cut)
    return lambda: monkeypatch.setattr(recording, "record_run", record_run)

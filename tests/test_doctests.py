"""The ``Examples`` sections of every module run as written (the recorder's where torch is installed)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dumpunet

MODULES = sorted(m.name for m in pkgutil.walk_packages(dumpunet.__path__, "dumpunet."))
TORCH_FREE = [name for name in MODULES if not name.startswith("dumpunet.recorder")]


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_run(name, tmp_path, monkeypatch):
    if name not in TORCH_FREE:
        pytest.importorskip("torch")
        pytest.importorskip("diffusers")
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output above)"


def test_the_examples_are_not_all_skipped():
    finder = doctest.DocTestFinder()
    run = 0
    for name in TORCH_FREE:
        for test in finder.find(importlib.import_module(name)):
            run += sum(1 for ex in test.examples if not ex.options.get(doctest.SKIP))
    assert run >= 10, f"only {run} examples in the torch-free modules run"

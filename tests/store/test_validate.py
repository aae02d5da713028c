"""validate: chunk byte sizes, malformed attributes as problems, call tables, non-local stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner
from zarr.core.buffer import cpu

from dumpunet.cli import main
from dumpunet.store.schema import ATTENTION_FEATURES, BLOCK_OUTPUT, CALL_STEP, IMAGES
from dumpunet.store.validate import MAX_CHUNK_REPORTS, validate

from test_store import write_store

CHUNK = "runs/main/blocks/IN01/output/c.1.0.1.0.0.0"  # call 1 (step 2), image 0, cond; 6x4x4 float16
CHUNK_BYTES = 6 * 4 * 4 * 2


@pytest.fixture
def store(tmp_path) -> Path:
    p = tmp_path / "s.zarr"
    write_store(p)
    return p


def _edit_attrs(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc["attributes"])
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("size, what", [(50, "truncated"), (0, "truncated"), (CHUNK_BYTES + 2, "oversized")])
def test_a_damaged_chunk_is_named_by_array_call_step_image_and_half(store, size, what):
    data = (store / CHUNK).read_bytes()
    (store / CHUNK).write_bytes((data * 2)[:size])
    assert validate(store).problems == [
        f"runs/main/blocks/IN01/output: call 1 (step 2), image 0, cond: chunk c.1.0.1.0.0.0 is {size} bytes, "
        f"expected {CHUNK_BYTES} ({what})"
    ]
    assert validate(store, quick=True).ok  # --quick skips the size scan


def test_many_damaged_chunks_are_counted_after_the_first_ones(store):
    chunks = sorted((store / "runs/main/blocks/IN00/output").glob("c.*"))
    for f in chunks:
        f.write_bytes(b"x")
    problems = validate(store).problems
    assert len(problems) == MAX_CHUNK_REPORTS + 1
    assert problems[-1] == f"runs/main/blocks/IN00/output: {len(chunks) - MAX_CHUNK_REPORTS} more damaged chunk(s)"


def test_a_missing_chunk_names_call_and_step(store):
    os.remove(store / CHUNK)
    problems = ["runs/main/blocks/IN01/output: call 1 (step 2) is complete but 1 of its chunk(s) are missing"]
    assert validate(store).problems == problems and validate(store, quick=True).problems == problems


def test_a_damaged_call_table_is_a_problem_not_a_traceback(store):
    (store / "runs/main/call_step/c.0").write_bytes(b"\0" * 10)
    assert validate(store).problems == [
        "runs/main/call_step: chunk c.0 is 10 bytes, expected 256 (truncated) (damaged call table)"
    ]


def test_a_call_table_claiming_a_huge_shape_is_refused_without_reading(store):
    meta = store / "runs/main/call_done/zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"] = [10**12]
    meta.write_text(json.dumps(doc))
    assert validate(store).problems == ["runs/main/call_done: claims 1000000000000 calls but holds 1 chunk(s) of 64 calls"]


@pytest.mark.parametrize("where, edit, problem", [
    ("zarr.json", lambda a: a.__setitem__("runs", 3), "root: attribute 'runs' must be a list, got 3"),
    ("zarr.json", lambda a: a["blocks"][0].pop("input_shape"), "root: block table entry 0 IN00: attribute 'input_shape' is missing"),
    ("zarr.json", lambda a: a.__setitem__("pairs", "x"), "root: attribute 'pairs' must be a list, got 'x'"),
    ("runs/main/zarr.json", lambda a: a.__setitem__("n_images", "2"), "runs/main: attribute 'n_images' must be an integer, got '2'"),
    ("runs/main/zarr.json", lambda a: a.__setitem__("guidance", ["cond", "cond"]),
     "runs/main: attribute 'guidance' must be a list of distinct labels from ['uncond', 'cond'], got ['cond', 'cond']"),
    ("runs/main/blocks/IN00/output/zarr.json", lambda a: a.__setitem__("recorded_steps", 5),
     "runs/main/blocks/IN00/output: attribute 'recorded_steps' must be a string, got 5"),
])
def test_malformed_attributes_are_problems_naming_the_field(store, where, edit, problem):
    _edit_attrs(store / where, edit)
    assert validate(store).problems == [problem]


def test_malformed_layer_attributes_are_problems(store):
    root = zarr.open_group(store, mode="r+")
    kind = ATTENTION_FEATURES["qk"]
    root.create_array(kind.path(run="main", layer="IN01.attn2"), shape=(3, 2, 2, 1, 16, 4), chunks=(1, 1, 1, 1, 16, 4),
                      dtype="float16", dimension_names=list(kind.dims), attributes={"layer_hw": [4]})
    assert validate(store).problems == [
        "runs/main/attention/IN01.attn2/qk: attribute 'layer_hw' must be a list of 2 non-negative integers, got [4]"
    ]


def _memory_copy(path: Path) -> zarr.storage.MemoryStore:
    data = {str(f.relative_to(path)): cpu.Buffer.from_bytes(f.read_bytes()) for f in path.rglob("*") if f.is_file()}
    return zarr.storage.MemoryStore(data)


def test_validate_reads_through_the_store_api_so_a_memory_store_validates(store):
    mem = _memory_copy(store)
    report = validate(mem)
    assert report.ok and report.notes == []
    mem._store_dict[CHUNK] = cpu.Buffer.from_bytes(b"\0" * 50)
    del mem._store_dict["runs/main/blocks/IN00/output/c.2.1.0.0.0.0"]
    assert validate(mem).problems == [
        "runs/main/blocks/IN00/output: call 2 (step 3) is complete but 1 of its chunk(s) are missing",
        f"runs/main/blocks/IN01/output: call 1 (step 2), image 0, cond: chunk c.1.0.1.0.0.0 is 50 bytes, expected {CHUNK_BYTES} (truncated)",
    ]


def test_cli_validate_quick(store):
    (store / CHUNK).write_bytes(b"x")
    r = CliRunner().invoke(main, ["validate", str(store)])
    assert r.exit_code == 1 and "(truncated)" in r.output and "is not sound (1 problem(s))" in r.output
    r = CliRunner().invoke(main, ["validate", "--quick", str(store)])
    assert r.exit_code == 0 and r.output == f"{store}: ok\n"


def test_axes_are_named_by_the_schema():
    assert (BLOCK_OUTPUT.axis("call"), BLOCK_OUTPUT.axis("image"), BLOCK_OUTPUT.axis("guidance")) == (0, 1, 2)
    assert ATTENTION_FEATURES["k"].axis("token") == 4 and IMAGES.axis("rgb") == 3 and CALL_STEP.axis("call") == 0
    with pytest.raises(KeyError, match=r"output has no axis 'query' \(axes: call, image, guidance, channel, y, x\)"):
        BLOCK_OUTPUT.axis("query")


def test_the_store_package_imports_neither_recorder_nor_analyzer():
    """Function-level imports included (Store.heatmap once imported the analyzer)."""
    import ast

    import dumpunet.store

    found = []
    for path in Path(dumpunet.store.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[:2] in (["dumpunet", "analyzer"], ["dumpunet", "recorder"])]
    assert found == []


def test_cli_validate_json_lists_the_problems_and_exits_1(store):
    ok = CliRunner().invoke(main, ["validate", "--json", str(store)])
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {"store": str(store), "ok": True, "problems": [], "notes": []}
    (store / CHUNK).write_bytes(b"x")
    bad = CliRunner().invoke(main, ["validate", "--json", str(store)])
    doc = json.loads(bad.stdout)
    assert bad.exit_code == 1 and doc["ok"] is False
    assert len(doc["problems"]) == 1 and doc["problems"][0].endswith("(truncated)")

"""Typed store attributes: round trips of a real recording's JSON, one error per malformed field,
and stores written before the typed values (raw dicts through plain zarr) still open."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr

import dumpunet
from dumpunet.errors import StoreError
from dumpunet.store.schema import (
    ATTENTION_FEATURES,
    BLOCK_OUTPUT,
    IMAGES,
    LayerAttrs,
    PairInfo,
    RootAttrs,
    RunAttrs,
    TokenRow,
)

RECORDED = json.loads((Path(__file__).parent / "data/recorded_attrs.json").read_text())
"""Attributes of a tiny-sd1 recording with a pair, per-block prompts and filtered self-attention."""


def test_a_real_recordings_attributes_round_trip_unchanged():
    root = _recorded_root()
    assert RootAttrs.from_json(root, "s").to_json() == root
    for name, doc in RECORDED["runs"].items():
        info = RunAttrs.from_json(doc, name)
        assert info.to_json() == doc
        assert info.complete and info.extra == {}  # every key the recorder writes is a field
    for layer, doc in RECORDED["layers"].items():
        info = LayerAttrs.from_json(doc, layer)
        assert info.to_json() == doc and info.extra == {}


def _recorded_root() -> dict:
    return copy.deepcopy(RECORDED["root"])


def test_typed_values_read_what_the_recording_holds():
    root = RootAttrs.from_json(RECORDED["root"], "s")
    assert root.runs == ("base", "layered")
    assert root.pairs == (PairInfo(base="base", layered="layered", label="layered"),)
    assert [b.name for b in root.blocks][:3] == ["IN00", "IN01", "IN02"]
    layered = RunAttrs.from_json(RECORDED["runs"]["layered"], "layered")
    assert layered.guidance == ("uncond", "cond") and layered.n_images == 1 and layered.seed == 7
    assert layered.block_prompts["cond"]["M00"] == "a excellent girl, pink hair"
    row = layered.token_row("cond", block="M00.attn2")
    assert isinstance(row, TokenRow) and row.tokens[: row.length] == (
        "<|startoftext|>", "a</w>", "excellent</w>", "girl</w>", ",</w>", "pink</w>", "hair</w>", "<|endoftext|>")
    base = RunAttrs.from_json(RECORDED["runs"]["base"], "base")
    assert base.token_row("uncond").tokens[:4] == ("<|startoftext|>", "bad</w>", "anatomy</w>", "<|endoftext|>")
    self_attn = LayerAttrs.from_json(RECORDED["layers"]["OUT11.attn1"], "l")
    assert self_attn.layer_hw == (32, 32) and self_attn.heads == "mean" and self_attn.recorded_steps == "2"
    assert self_attn.queries == (tuple(range(0, 32, 2)), tuple(range(0, 32, 2)))


def _set(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()

# (what, parser, document, path to change, new value, message the error must contain)
MALFORMED = [
    ("root not an object", RootAttrs, None, (), [1, 2], "attributes must be a JSON object, got list"),
    ("runs an integer", RootAttrs, "root", ("runs",), 3, "attribute 'runs' must be a list, got 3"),
    ("run name escapes", RootAttrs, "root", ("runs",), ["../x"], "'../x' is not a valid name"),
    ("run name not a string", RootAttrs, "root", ("runs",), [{"a": 1}], "attribute 'runs' must be a list of strings"),
    ("block missing a key", RootAttrs, "root", ("blocks", 1, "module"), _DELETE, "block table entry 1 IN01: attribute 'module' is missing"),
    ("block shape wrong", RootAttrs, "root", ("blocks", 0, "output_shape"), [8, 32], "IN00: attribute 'output_shape' must be a list of 3"),
    ("block named like a path", RootAttrs, "root", ("blocks", 0, "name"), "/outside/X", "'/outside/X' is not a valid name"),
    ("pairs a string", RootAttrs, "root", ("pairs",), "layered", "attribute 'pairs' must be a list, got 'layered'"),
    ("pair missing a key", RootAttrs, "root", ("pairs", 0, "base"), _DELETE, "pairs entry 0: attribute 'base' is missing"),
    ("header missing", RootAttrs, "root", ("dumpunet",), _DELETE, "not a dumpunet store"),
    ("model a list", RootAttrs, "root", ("model",), [], "attribute 'model' must be a JSON object"),
    ("n_images a string", RunAttrs, "run", ("n_images",), "two", "attribute 'n_images' must be an integer, got 'two'"),
    ("n_images zero", RunAttrs, "run", ("n_images",), 0, "attribute 'n_images' must be at least 1, got 0"),
    ("guidance unknown", RunAttrs, "run", ("guidance",), ["cond", "both"], "attribute 'guidance' must be a list of distinct labels"),
    ("complete a string", RunAttrs, "run", ("complete",), "yes", "attribute 'complete' must be true or false, got 'yes'"),
    ("interrupted a number", RunAttrs, "run", ("interrupted",), 3, "attribute 'interrupted' must be a string, got 3"),
    ("cfg not finite", RunAttrs, "run", ("cfg",), float("nan"), "attribute 'cfg' must be a finite number"),
    ("seed a float", RunAttrs, "run", ("seed",), 7.5, "attribute 'seed' must be an integer, got 7.5"),
    ("layer name escapes", RunAttrs, "run", ("attention_layers",), ["/outside/ESCAPED"], "'/outside/ESCAPED' is not a valid name"),
    ("tokens half unknown", RunAttrs, "run", ("tokens", "both"), [], "attribute 'tokens' has unknown guidance half 'both'"),
    ("token row a string", RunAttrs, "run", ("tokens", "cond"), "x", "tokens cond: must be a list, got str"),
    ("token ids not ints", RunAttrs, "run", ("tokens", "cond", 0, "ids", 0), "a", "tokens cond row 0: attribute 'ids' must be a list of integers"),
    ("token length too long", RunAttrs, "run", ("tokens", "cond", 0, "length"), 500, "tokens cond row 0: attribute 'length' must be at most 77"),
    ("tokens and ids disagree", RunAttrs, "run", ("tokens", "cond", 0, "tokens"), ["a"], "77 token ids but 1 token strings"),
    ("block prompts not texts", RunAttrs, "run", ("block_prompts", "cond", "M00"), 3, "attribute 'block_prompts' cond must map block names to texts"),
    ("layer_hw missing", LayerAttrs, "self", ("layer_hw",), _DELETE, "attribute 'layer_hw' is missing"),
    ("layer_hw short", LayerAttrs, "self", ("layer_hw",), [32], "attribute 'layer_hw' must be a list of 2 non-negative integers"),
    ("query rows outside", LayerAttrs, "self", ("query_rows", 0), 40, "attribute 'query_rows' must be pixel indices below 32"),
    ("heads unknown", LayerAttrs, "self", ("heads",), "max", "attribute 'heads' must be 'all' or 'mean', got 'max'"),
    ("recorded_steps a list", LayerAttrs, "self", ("recorded_steps",), [2], "attribute 'recorded_steps' must be a string"),
]


@pytest.mark.parametrize("what, parser, source, path, value, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_each_malformed_attribute_is_a_store_error_naming_the_field(what, parser, source, path, value, message):
    docs = {"root": RECORDED["root"], "run": RECORDED["runs"]["layered"], "self": RECORDED["layers"]["OUT11.attn1"]}
    doc = value if source is None else _set(docs[source], path, value)
    with pytest.raises(StoreError, match=re.escape(message)) as err:
        parser.from_json(doc, "where")
    assert str(err.value).startswith("where") and "\n" not in str(err.value)


# --------------------------------------------------------------------------- stores from before the typed values


OLD_BLOCK = {"name": "IN01", "module": "down_blocks.0.attentions.0",
             "modules": ["down_blocks.0.resnets.0", "down_blocks.0.attentions.0"],
             "input_module": "down_blocks.0.resnets.0", "output_shape": [2, 4, 4], "input_shape": [2, 4, 4],
             "cross_attention": True}


def write_old_layout(path: Path) -> None:
    """A store as dumpunet 0.1 wrote it, attribute dicts and all, through plain zarr (no dumpunet)."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.attrs.update({
        "dumpunet": {"kind": "dumpunet-store", "format_version": 1, "format_minor": 0, "writer": "dumpunet 0.1.0",
                     "created": "2026-11-25T21:36:21+00:00"},
        "model": {"name": "tiny-sd1"}, "versions": {"dumpunet": "0.1.0"}, "runs": [], "blocks": [OLD_BLOCK],
    })
    root.attrs["runs"] = ["main"]  # the old writer appended runs as it began them
    run = root.create_group("runs/main")
    run.attrs.update({"prompt": "a girl", "n_images": 1, "guidance": ["uncond", "cond"], "steps": 2, "height": 16,
                      "width": 16, "record_steps": "1-2", "recorded_blocks": ["IN01"], "inputs": False,
                      "dtype": "float32", "attention_layers": ["IN01.attn2"], "complete": False,
                      "tokens": {"cond": [{"ids": [0, 1, 2], "tokens": ["<s>", "girl</w>", "</s>"], "length": 3}]}})
    run.attrs["complete"] = True
    kw = {"chunk_key_encoding": {"name": "default", "separator": "."}, "fill_value": 0}
    for name, values, dtype in (("call_step", [1, 2], "int32"), ("call_substep", [0, 0], "int32"),
                                ("call_timestep", [999.0, 500.0], "float32"), ("call_done", [1, 1], "uint8")):
        a = root.create_array(f"runs/main/{name}", shape=(2,), chunks=(64,), dtype=dtype, dimension_names=["call"],
                              compressors=None, **kw)
        a[:] = values
    out = root.create_array("runs/main/blocks/IN01/output", shape=(2, 1, 2, 2, 4, 4), chunks=(1, 1, 1, 2, 4, 4),
                            dtype="float32", dimension_names=list(BLOCK_OUTPUT.dims), compressors=None, **kw)
    out[:] = np.arange(2 * 2 * 2 * 16, dtype=np.float32).reshape(2, 1, 2, 2, 4, 4)
    qk = root.create_array("runs/main/attention/IN01.attn2/qk", shape=(2, 1, 2, 1, 16, 3), chunks=(1, 1, 1, 1, 16, 3),
                           dtype="float32", dimension_names=list(ATTENTION_FEATURES["qk"].dims), compressors=None,
                           attributes={"layer_hw": [4, 4], "module": "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                                       "cross_attention": True}, **kw)
    p = np.linspace(0, 1, 16, dtype=np.float32)[:, None]  # query q attends to "girl" with weight q / 15
    qk[:] = np.broadcast_to(np.concatenate([(1 - p) / 2, p, (1 - p) / 2], axis=1), qk.shape)
    img = root.create_array("runs/main/images", shape=(1, 16, 16, 3), chunks=(1, 16, 16, 3), dtype="uint8",
                            dimension_names=list(IMAGES.dims), **kw)
    img[:] = 9


def test_a_store_written_before_the_typed_attributes_still_opens(tmp_path):
    p = tmp_path / "old.zarr"
    write_old_layout(p)
    store = dumpunet.open(p)
    assert store.info.pairs == () and store.pairs == [] and store.blocks == ["IN01"]
    r = store.run()
    assert r.info.prompt == "a girl" and r.info.complete and r.steps == [1, 2]
    np.testing.assert_array_equal(r.features("IN01", 2, guidance="uncond"), np.arange(64, 96, dtype=np.float32).reshape(2, 4, 4))
    assert r.token_row(guidance="cond") == TokenRow((0, 1, 2), ("<s>", "girl</w>", "</s>"), 3)
    assert r.token_row(guidance="uncond") is None
    assert r.layer_info("in01.attn2") == LayerAttrs(layer_hw=(4, 4), module="down_blocks.0.attentions.0.transformer_blocks.0.attn2")
    assert r.attention("IN01.attn2", 1).shape == (1, 16, 3)
    assert store.select_steps("") == [1, 2] and store.image(0)[0, 0].tolist() == [9, 9, 9]
    heat = dumpunet.heatmap(store, "girl")
    assert heat.shape == (16, 16) and heat[-1, -1] == 1.0 and heat[0, 0] == 0.0


def test_step_specs_of_a_run_without_calls_use_its_steps_attribute(tmp_path):
    from dumpunet.store.writer import StoreWriter

    w = StoreWriter(tmp_path / "s.zarr", model={}, versions={})
    w.begin_run("main", RunAttrs(steps=5), [], which=("output",), dtype="float16")
    w.close()
    store = dumpunet.open(tmp_path / "s.zarr")
    assert store.steps == [] and store.select_steps("2-3") == [2, 3] and store.select_steps("") == []

"""``dumpunet record`` and ``explain`` with A1111 prompt syntax, on the embedded tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner

import dumpunet
from dumpunet.cli import main

pytestmark = pytest.mark.recorder

SMALL = ("--sampling-steps", "2", "--seed", "7", "--width", "64", "--height", "64", "--blocks", "M00", "--quiet")


def record(tmp_path, name: str, *args: str):
    out = tmp_path / f"{name}.zarr"
    res = CliRunner().invoke(main, ["record", *SMALL, *args, "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return dumpunet.open(out)


def test_an_emphasised_prompt_changes_the_image_and_stores_its_77_tokens(tmp_path):
    weighted = record(tmp_path, "weighted", "--prompt", "a (cute:1.3) girl", "--attention", "none")
    plain = record(tmp_path, "plain", "--prompt", "a cute girl", "--attention", "none")
    row = weighted.run().info.tokens["cond"][0]
    assert len(row.ids) == 77 and row.length == 5
    assert row.tokens[:5] == ("<|startoftext|>", "a</w>", "cute</w>", "girl</w>", "<|endoftext|>")
    assert row == plain.run().info.tokens["cond"][0]  # same tokens; only the weight differs
    assert np.abs(weighted.image(0).astype(int) - plain.image(0).astype(int)).max() > 0


def test_emphasis_ignore_reads_the_brackets_and_drops_the_weight(tmp_path):
    ignored = record(tmp_path, "ignored", "--prompt", "a (cute:1.3) girl", "--emphasis", "ignore", "--attention", "none")
    plain = record(tmp_path, "plain", "--prompt", "a cute girl", "--emphasis", "none", "--attention", "none")
    np.testing.assert_array_equal(ignored.image(0), plain.image(0))
    # emphasis none: the brackets are prompt text, so the tokens and the picture differ
    literal = record(tmp_path, "literal", "--prompt", "a (cute:1.3) girl", "--emphasis", "none", "--attention", "none")
    assert literal.run().info.tokens["cond"][0].length > 5
    assert np.abs(literal.image(0).astype(int) - plain.image(0).astype(int)).max() > 0


def test_a_prompt_of_two_chunks_records_attention_over_154_tokens(tmp_path):
    words = " ".join(["girl"] * 80) + " with pink hair"  # 83 tokens: two chunks
    store = record(tmp_path, "long", "--prompt", words, "--attention", "qk", "--attention-blocks", "M00")
    run = store.run()
    layer = run.attention_layers[0]
    assert run.attention_array(layer, "qk").shape[-1] == 154
    row = run.info.tokens["cond"][0]
    assert len(row.ids) == 154 and row.length == 77 + 10  # chunk 2: start, 8 words, end
    assert row.tokens[77:87] == ("<|startoftext|>", *["girl</w>"] * 5, "with</w>", "pink</w>", "hair</w>", "<|endoftext|>")
    assert len(run.info.tokens["uncond"][0].ids) == 154  # the negative is padded to the same chunks


def test_a1111_syntax_with_per_block_prompts_is_refused_in_one_line(tmp_path):
    res = CliRunner().invoke(main, ["record", *SMALL, "--prompt", "a (cute:1.3) (~: M00: excellent :~) girl",
                                    "--out", str(tmp_path / "x.zarr")])
    assert res.exit_code == 1
    assert "A1111 prompt syntax" in res.output and "not supported yet" in res.output


def test_bad_emphasis_and_clip_skip_are_refused():
    res = CliRunner().invoke(main, ["record", "--prompt", "a", "--clip-skip", "0", "--out", "x.zarr"])
    assert res.exit_code == 1 and "--clip-skip must be between 1 and 48, got 0" in res.output
    res = CliRunner().invoke(main, ["record", "--prompt", "a", "--emphasis", "loud", "--out", "x.zarr"])
    assert res.exit_code == 2 and "loud" in res.output


def test_explain_json_shows_the_a1111_weights_and_schedule():
    res = CliRunner().invoke(main, ["explain", "a (cute:1.3) girl, [red:blue:5] hair", "--negative-prompt", "ugly", "--sampling-steps", "10",
                                    "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)["a1111"]
    pieces = doc["positive"]["schedule"][0]["pieces"]
    assert {"text": "cute", "weight": 1.3, "break": False} in pieces
    assert [e["until_step"] for e in doc["positive"]["schedule"]] == [5, 10]
    assert doc["negative"]["schedule"] == [{"until_step": 10, "text": "ugly", "pieces": [{"text": "ugly", "weight": 1.0, "break": False}]}]
    text = CliRunner().invoke(main, ["explain", "a (cute:1.3) girl", "--negative-prompt", "ugly"]).output
    assert "A1111 positive prompt: weights cute:1.3" in text and "A1111 negative" not in text

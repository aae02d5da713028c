"""A1111 extra-network tags: ``<lora:NAME:WEIGHT>`` cut from the prompt, read, refused where unsupported."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dumpunet.a1111_chunks import a1111_summary, explain_a1111
from dumpunet.a1111_networks import LoraTag, NetworkTagError, check_outside_groups, extract_networks
from dumpunet.cli import main
from dumpunet.prompts import parse_layer_prompt


@pytest.mark.parametrize(
    ("tag", "te", "unet"),
    [
        ("<lora:x>", 1.0, 1.0),
        ("<lora:x:0.8>", 0.8, 0.8),
        ("<lora:x:0.8:0.3>", 0.8, 0.3),
        ("<lora:x:te=0.5>", 0.5, 0.5),
        ("<lora:x:unet=0.25>", 1.0, 0.25),
        ("<lora:x:1:unet=-0.5>", 1.0, -0.5),
        ("<lyco:x:0.7>", 0.7, 0.7),  # A1111's other spelling
    ],
)
def test_lora_weights_as_a1111_reads_them(tag, te, unet):
    p = extract_networks(f"a {tag}, girl")
    assert p.text == "a , girl"
    assert p.loras == (LoraTag("x", te, unet, tag, 2),)


def test_every_tag_is_cut_and_the_text_around_it_kept():
    p = extract_networks("<lora:a:1>masterpiece, <lora:b:0.5> (cute:1.2) girl<lora:a2:1>")
    assert p.text == "masterpiece,  (cute:1.2) girl"
    assert [t.name for t in p.loras] == ["a", "b", "a2"]
    assert extract_networks("a <not a tag> girl").text == "a <not a tag> girl"  # no 'kind:' : text


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("x <hypernet:h:1>", "'<hypernet:...>' is not supported: dumpunet loads LoRAs only"),
        ("x <lora:a:heavy>", "the text encoder weight 'heavy' is not a number"),
        ("x <lora:a:1:nan>", "the U-Net weight 'nan' is not a number"),
        ("x <lora:a:1:1:8>", "dyn (LyCORIS dynamic rank) is not supported"),
        ("x <lora:a:dyn=8>", "dyn (LyCORIS dynamic rank) is not supported"),
        ("x <lora:a:scale=2>", "unknown argument(s) scale; a LoRA tag takes te= and unet="),
        ("x <lora: :1>", "the tag names no LoRA"),
    ],
)
def test_unsupported_tags_are_refused_with_a_caret(prompt, message):
    with pytest.raises(NetworkTagError) as err:
        extract_networks(prompt)
    assert str(err.value).startswith(f"bad extra-network tag: {message}")
    assert str(err.value).splitlines()[2] == "    " + "^" * (len(prompt) - 2)


def test_a_tag_inside_a_per_block_group_is_refused():
    inside = "a (~: M00: <lora:x:1> cute :~) girl"
    with pytest.raises(NetworkTagError, match="put the tag outside the"):
        check_outside_groups(inside, [(g.start, g.end) for g in parse_layer_prompt(inside).groups])
    outside = "a (~: M00: cute :~) girl <lora:x:1>"
    check_outside_groups(outside, [(g.start, g.end) for g in parse_layer_prompt(outside).groups])
    assert parse_layer_prompt(extract_networks(outside).text).resolve(["M00", "IN00"]) == {
        "M00": "a cute girl ", "IN00": "a  girl "}


def test_explain_a1111_lists_the_loras_and_reads_the_text_without_them():
    ex = explain_a1111("a <lora:style:0.5:1>(cute:1.2) girl", 10)
    assert ex["loras"] == [{"name": "style", "te_weight": 0.5, "unet_weight": 1.0, "tag": "<lora:style:0.5:1>"}]
    assert [p["text"] for p in ex["schedule"][0]["pieces"]] == ["a ", "cute", " girl"]
    assert a1111_summary(ex) == "weights cute:1.2; LoRA style weight 0.5 (U-Net 1)"
    assert a1111_summary(explain_a1111("a girl <lora:s:0.7>", 10)) == "LoRA s weight 0.7"


def test_explain_cli_shows_the_lora_tags_and_the_block_prompts_without_them():
    res = CliRunner().invoke(main, ["explain", "a (~: M00: cute :~) girl <lora:style:0.5:1>", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["a1111"]["positive"]["loras"] == [
        {"name": "style", "te_weight": 0.5, "unet_weight": 1.0, "tag": "<lora:style:0.5:1>"}]
    assert doc["positive"]["M00"] == "a cute girl "
    res = CliRunner().invoke(main, ["explain", "a (~: M00: <lora:style:1> :~) girl"])
    assert res.exit_code == 1 and res.output.startswith("Error: bad extra-network tag: a LoRA changes the whole U-Net")
    text = CliRunner().invoke(main, ["explain", "a girl <lora:style:0.5>"]).output
    assert "A1111 positive prompt: LoRA style weight 0.5" in text

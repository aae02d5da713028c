"""LoRAs and textual-inversion embeddings: ``--lora``, ``<lora:NAME:W>`` with ``--lora-dir``, ``--embedding``."""

from __future__ import annotations

import datetime
import hashlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from click.testing import CliRunner  # noqa: E402
from network_files import (  # noqa: E402
    a1111_embedding,
    diffusers_embedding,
    embedding_vectors,
    kohya_lora,
    peft_lora,
    sdxl_embedding,
)

import dumpunet  # noqa: E402
from dumpunet.cli import main  # noqa: E402
from dumpunet.recorder.samplers import make_scheduler  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.recorder

SMALL = ("--sampling-steps", "2", "--seed", "7", "--width", "64", "--height", "64", "--sampler", "Euler", "--quiet")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """LoRA files for tiny-sd1 (kohya and peft layouts, in a --lora-dir) and one for tiny-sdxl."""
    root = tmp_path_factory.mktemp("networks")
    loras = root / "Lora"
    (loras / "sub").mkdir(parents=True)
    sd1, sdxl = build_tiny_pipeline("tiny-sd1"), build_tiny_pipeline("tiny-sdxl")
    return {
        "dir": loras,
        "kohya": kohya_lora(sd1, loras / "pinkhair.safetensors", metadata={"ss_network_dim": "4"}),
        "peft": peft_lora(sd1, loras / "sub" / "style.safetensors"),
        "sdxl": kohya_lora(sdxl, root / "xl_style.safetensors", sgm=True),
    }


def record(tmp_path, name: str, *args: str, model: str = "tiny-sd1"):
    out = tmp_path / f"{name}.zarr"
    res = CliRunner().invoke(main, ["record", "--model", model, *SMALL, *args, "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return dumpunet.open(out)


def refused(tmp_path, *args: str) -> str:
    out = tmp_path / "refused.zarr"
    res = CliRunner().invoke(main, ["record", *SMALL, *args, "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.count("\n") == 1, res.output
    assert not out.exists()
    return res.output


def plain_image(pipe, prompt: str) -> np.ndarray:
    """The picture of a plain diffusers pipeline with SMALL's settings, as the store keeps it."""
    pipe.scheduler = make_scheduler("Euler", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt=prompt, num_inference_steps=2, guidance_scale=7.0, height=64, width=64,
                  generator=[torch.Generator().manual_seed(7)], output_type="np").images
    return (images[0] * 255).round().astype(np.uint8)


def test_a_kohya_lora_changes_the_unet_and_records_the_plain_pipelines_picture_bit_for_bit(tmp_path, files):
    path = files["kohya"]
    base = record(tmp_path, "base", "--prompt", "a cute girl", "--blocks", "M00")
    lora = record(tmp_path, "lora", "--prompt", "a cute girl", "--blocks", "M00", "--lora", f"{path}:0.8")
    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.load_lora_weights(str(path), adapter_name="pinkhair")
    pipe.set_adapters(["pinkhair"], [0.8])
    np.testing.assert_array_equal(lora.image(0), plain_image(pipe, "a cute girl"))
    assert np.abs(lora.features("M00", 1).astype(float) - base.features("M00", 1).astype(float)).max() > 0.01
    assert lora.info.model["unet_fingerprint"] != base.info.model["unet_fingerprint"]


def test_weight_0_is_the_picture_without_the_lora(tmp_path, files):
    base = record(tmp_path, "base", "--prompt", "a cute girl", "--attention", "none", "--blocks", "none")
    zero = record(tmp_path, "zero", "--prompt", "a cute girl", "--attention", "none", "--blocks", "none",
                  "--lora", f"{files['kohya']}:0")
    np.testing.assert_array_equal(zero.image(0), base.image(0))


def test_a_prompt_tag_finds_the_lora_in_lora_dir_and_is_cut_from_the_text(tmp_path, files):
    tagged = record(tmp_path, "tagged", "--prompt", "a cute <lora:style:0.7> girl", "--lora-dir", str(files["dir"]),
                    "--blocks", "M00")
    base = record(tmp_path, "base", "--prompt", "a cute  girl", "--blocks", "M00")
    run = tagged.run()
    assert run.info.prompt == "a cute  girl"
    assert run.info.tokens == base.run().info.tokens  # the encoder read the text without the tag
    assert np.abs(tagged.features("M00", 2).astype(float) - base.features("M00", 2).astype(float)).max() > 0.01
    (lora,) = tagged.info.model["loras"]
    data = files["peft"].read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert lora["name"] == "style" and lora["te_weight"] == lora["unet_weight"] == 0.7
    assert lora["source"] == "<lora:style:0.7>" and lora["file"] == str(files["peft"])
    assert lora["sha256"] == hashlib.sha256(data).hexdigest()
    assert lora["a1111_hash"] == hashlib.sha256(data[header:]).hexdigest()  # A1111's addnet hash: no header
    assert lora["short_hash"] == lora["a1111_hash"][:12]
    info = CliRunner().invoke(main, ["info", str(tagged.path)]).output
    assert f"lora      style  weight 0.7  hash {lora['short_hash']}  {files['peft']}" in info


def test_separate_text_encoder_and_unet_weights_reach_each_part(tmp_path, files):
    pipe_te = build_tiny_pipeline("tiny-sd1")
    te_only = record(tmp_path, "te", "--prompt", "a girl <lora:pinkhair:1:0>", "--lora-dir", str(files["dir"]),
                     "--blocks", "none", "--attention", "none")
    pipe_te.load_lora_weights(str(files["kohya"]), adapter_name="pinkhair")
    pipe_te.set_adapters(["pinkhair"], [{"unet": 0.0, "text_encoder": 1.0}])
    np.testing.assert_array_equal(te_only.image(0), plain_image(pipe_te, "a girl "))
    base = record(tmp_path, "base", "--prompt", "a girl ", "--blocks", "none", "--attention", "none")
    assert np.abs(te_only.image(0).astype(int) - base.image(0).astype(int)).max() > 0


def test_an_sdxl_lora_loads_into_tiny_sdxl_and_is_refused_on_sd1(tmp_path, files):
    base = record(tmp_path, "base", "--prompt", "a cat", "--blocks", "M00", model="tiny-sdxl")
    xl = record(tmp_path, "xl", "--prompt", "a cat", "--blocks", "M00", "--lora", str(files["sdxl"]), model="tiny-sdxl")
    assert np.abs(xl.features("M00", 1).astype(float) - base.features("M00", 1).astype(float)).max() > 0.01
    msg = refused(tmp_path, "--lora", str(files["sdxl"]))
    assert msg.startswith(f"Error: LoRA xl_style ({files['sdxl']}) is for SDXL"), msg
    assert "the model is SD1/SD2" in msg


def test_an_sd1_lora_on_sdxl_is_one_line(tmp_path, files):
    msg = refused(tmp_path, "--model", "tiny-sdxl", "--lora", str(files["kohya"]))
    assert msg.startswith(f"Error: LoRA pinkhair ({files['kohya']}) "), msg


def test_bad_lora_input_is_one_line_and_writes_nothing(tmp_path, files):
    msg = refused(tmp_path, "--prompt", "a <lora:nope:1> girl", "--lora-dir", str(files["dir"]))
    assert msg == f"Error: no LoRA named 'nope' (<lora:nope:1>) in --lora-dir {files['dir']}; found: pinkhair, style\n"
    msg = refused(tmp_path, "--prompt", "a <lora:style:1> girl")
    assert msg == "Error: the prompt names LoRA 'style' (<lora:style:1>); give --lora-dir FOLDER to find it in\n"
    assert refused(tmp_path, "--lora", str(tmp_path / "gone.safetensors")) == (
        f"Error: no LoRA file at {tmp_path / 'gone.safetensors'}\n")
    evil = tmp_path / "evil.pt"
    torch.save({"lora_unet_x.alpha": datetime.timedelta(days=1)}, evil)
    msg = refused(tmp_path, "--lora", str(evil))
    assert msg.startswith(f"Error: LoRA {evil} holds Python objects besides tensors"), msg
    assert refused(tmp_path, "--lora", str(files["kohya"]), "--prompt", "<lora:pinkhair:0.5>",
                   "--lora-dir", str(files["dir"])).startswith("Error: LoRA 'pinkhair' is given twice, differently")


def test_a_tag_inside_a_per_block_group_is_refused_and_one_outside_works(tmp_path, files):
    out = tmp_path / "g.zarr"
    res = CliRunner().invoke(main, ["record", *SMALL, "--prompt", "a (~: M00: <lora:style:1> cute :~) girl",
                                    "--lora-dir", str(files["dir"]), "--out", str(out)])
    assert res.exit_code == 1 and not out.exists()
    assert res.output.startswith("Error: bad extra-network tag: a LoRA changes the whole U-Net"), res.output
    store = record(tmp_path, "outside", "--prompt", "a (~: M00: cute :~) girl <lora:style:1>",
                   "--lora-dir", str(files["dir"]), "--blocks", "M00")
    prompts = store.run().info.block_prompts["cond"]
    assert prompts["M00"] == "a cute girl " and prompts["IN00"] == "a  girl "
    assert [x["name"] for x in store.info.model["loras"]] == ["style"]


# ----------------------------------------------------------------------------- embeddings


def test_an_a1111_embedding_is_the_token_of_its_file_name_with_the_files_vector(tmp_path):
    vectors = embedding_vectors(32, 1)
    emb = a1111_embedding(tmp_path / "sparkle.pt", vectors)
    store = record(tmp_path, "emb", "--prompt", "a (sparkle:1.2) girl", "--embedding", str(emb), "--blocks", "none")
    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.load_textual_inversion({"sparkle": vectors[0]}, token="sparkle")
    token_id = pipe.tokenizer.convert_tokens_to_ids("sparkle")
    row = store.run().info.tokens["cond"][0]
    assert row.ids[:5] == (pipe.tokenizer.bos_token_id, pipe.tokenizer.convert_tokens_to_ids("a</w>"), token_id,
                           pipe.tokenizer.convert_tokens_to_ids("girl</w>"), pipe.tokenizer.eos_token_id)
    # the encoder's input embedding of that token is the file's vector
    table = pipe.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(table[token_id], vectors[0], rtol=0, atol=0)
    (info,) = store.info.model["embeddings"]
    assert info["name"] == "sparkle" and info["vectors"] == 1
    assert info["sha256"] == info["a1111_hash"] == hashlib.sha256(emb.read_bytes()).hexdigest()


def test_a_diffusers_embedding_records_the_plain_pipelines_picture(tmp_path):
    vectors = embedding_vectors(32, 1, seed=5)
    emb = diffusers_embedding(tmp_path / "easyneg.safetensors", vectors)
    store = record(tmp_path, "emb", "--prompt", "a easyneg girl", "--embedding", str(emb), "--blocks", "none",
                   "--attention", "none")
    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.load_textual_inversion({"easyneg": vectors[0]}, token="easyneg")
    np.testing.assert_array_equal(store.image(0), plain_image(pipe, "a easyneg girl"))


def test_a_multi_vector_embedding_takes_one_token_per_vector_also_in_a1111_syntax(tmp_path):
    vectors = embedding_vectors(32, 3, seed=3)
    emb = a1111_embedding(tmp_path / "trio.pt", vectors)
    store = record(tmp_path, "emb", "--prompt", "a [trio] girl", "--embedding", str(emb), "--blocks", "none")
    row = store.run().info.tokens["cond"][0]
    assert row.tokens[:7] == ("<|startoftext|>", "a</w>", "trio", "trio_1", "trio_2", "girl</w>", "<|endoftext|>")
    # at a chunk's end the embedding moves whole into the next chunk, as in A1111
    long = record(tmp_path, "long", "--prompt", "girl " * 73 + "trio", "--embedding", str(emb), "--blocks", "none",
                  "--attention", "none")
    row = long.run().info.tokens["cond"][0]
    assert row.tokens[73:77] == ("girl</w>", "<|endoftext|>", "<|endoftext|>", "<|endoftext|>")
    assert row.tokens[77:82] == ("<|startoftext|>", "trio", "trio_1", "trio_2", "<|endoftext|>")


def test_an_sdxl_embedding_fills_both_encoders(tmp_path):
    clip_l, clip_g = embedding_vectors(32, 2, seed=4), embedding_vectors(64, 2, seed=6)
    emb = sdxl_embedding(tmp_path / "shine.safetensors", clip_l, clip_g)
    store = record(tmp_path, "xl", "--prompt", "a (shine:1.1) cat", "--embedding", str(emb), "--blocks", "none",
                   model="tiny-sdxl")
    assert store.run().info.tokens["cond"][0].tokens[2:4] == ("shine", "shine_1")
    pipe = build_tiny_pipeline("tiny-sdxl")
    pipe.load_textual_inversion({"shine": clip_l}, token="shine", tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder)
    pipe.load_textual_inversion({"shine": clip_g}, token="shine", tokenizer=pipe.tokenizer_2,
                                text_encoder=pipe.text_encoder_2)
    for tok, enc, v in ((pipe.tokenizer, pipe.text_encoder, clip_l), (pipe.tokenizer_2, pipe.text_encoder_2, clip_g)):
        ids = tok.convert_tokens_to_ids(["shine", "shine_1"])
        torch.testing.assert_close(enc.get_input_embeddings().weight[ids], v, rtol=0, atol=0)


def test_bad_embeddings_are_one_line(tmp_path):
    sd1 = a1111_embedding(tmp_path / "one.pt", embedding_vectors(32))
    msg = refused(tmp_path, "--model", "tiny-sdxl", "--embedding", str(sd1))
    assert msg == f"Error: embedding {sd1} is for SD1/SD2 (one set of vectors); an SDXL model needs clip_l and clip_g\n"
    wide = diffusers_embedding(tmp_path / "wide.safetensors", embedding_vectors(768))
    assert refused(tmp_path, "--embedding", str(wide)) == (
        f"Error: embedding {wide} has vectors of 768 values; the text encoder takes 32: it is for another model\n")
    # a name the vocabulary already holds (here a word piece) cannot become a token of its own
    piece = next(k for k in build_tiny_pipeline("tiny-sd1").tokenizer.get_vocab() if k.isalpha() and len(k) > 3)
    clash = diffusers_embedding(tmp_path / f"{piece}.safetensors", embedding_vectors(32))
    assert f"the tokenizer already has a token {piece!r}; rename the file" in refused(tmp_path, "--embedding", str(clash))
    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": datetime.date(2020, 1, 1)}}, evil)
    assert refused(tmp_path, "--embedding", str(evil)).startswith(f"Error: embedding {evil} holds Python objects")
    assert refused(tmp_path, "--embedding", str(tmp_path / "no.pt")) == f"Error: no embedding file at {tmp_path / 'no.pt'}\n"


def test_the_python_api_records_what_apply_networks_loaded(tmp_path, files):
    from dumpunet.recorder.networks import apply_networks, parse_lora_option

    emb = a1111_embedding(tmp_path / "sparkle.pt", embedding_vectors(32, 2))
    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.set_progress_bar_config(disable=True)
    info = apply_networks(pipe, loras=[parse_lora_option(f"{files['kohya']}:0.5")], embeddings=[str(emb)])
    with dumpunet.record(pipe, tmp_path / "api.zarr", blocks="M00", attention=None, model_info=info, progress=False):
        pipe("a sparkle girl", num_inference_steps=1, height=64, width=64)
    model = dumpunet.open(tmp_path / "api.zarr").info.model
    assert [(x["name"], x["te_weight"], x["unet_weight"]) for x in model["loras"]] == [("pinkhair", 0.5, 0.5)]
    assert [(x["name"], x["vectors"]) for x in model["embeddings"]] == [("sparkle", 2)]
    assert pipe.get_list_adapters() == {"unet": ["pinkhair"], "text_encoder": ["pinkhair"]}


def test_a_lora_named_twice_alike_loads_once(files):
    from dumpunet.a1111_networks import extract_networks
    from dumpunet.recorder.networks import resolve_loras

    tags = extract_networks("<lora:pinkhair:0.5> a girl <lora:style>").loras
    uses = resolve_loras([f"{files['kohya']}:0.5"], tags, files["dir"])
    assert [(u.name, u.te_weight, u.path, u.source) for u in uses] == [
        ("pinkhair", 0.5, files["kohya"], "--lora"), ("style", 1.0, files["peft"], "<lora:style>")]

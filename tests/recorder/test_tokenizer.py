"""The offline CLIP tokenizer: word-level tokens, byte fallback, stable ids."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dumpunet.recorder.tokenizer import BOS, EOS, WORDS, tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.recorder


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize(
    ("prompt", "tokens"),
    [
        ("a cute girl, pink hair", ["a</w>", "cute</w>", "girl</w>", ",</w>", "pink</w>", "hair</w>"]),
        (
            "Masterpiece, best quality, 1girl, school uniform, wide shot",
            ["masterpiece</w>", ",</w>", "best</w>", "quality</w>", ",</w>", "1</w>", "girl</w>", ",</w>",
             "school</w>", "uniform</w>", ",</w>", "wide</w>", "shot</w>"],
        ),
        ("bad anatomy, (worst quality:1.4)", ["bad</w>", "anatomy</w>", ",</w>", "(</w>", "worst</w>", "quality</w>",
                                              ":</w>", "1</w>", ".</w>", "4</w>", ")</w>"]),
        ("it's a dog's photo", ["it</w>", "'s</w>", "a</w>", "dog</w>", "'s</w>", "photo</w>"]),
        ("((masterpiece)), (pink hair:1.2),", ["((</w>", "masterpiece</w>", ")),</w>", "(</w>", "pink</w>", "hair</w>",
                                             ":</w>", "1</w>", ".</w>", "2</w>", "),</w>"]),
    ],
)
def test_prompts_split_into_words(tok, prompt, tokens):
    assert tok.tokenize(prompt) == tokens


def test_unknown_words_fall_back_to_pieces_and_bytes(tok):
    assert tok.tokenize("zyxwvut") == ["z", "y", "x", "w", "v", "ut</w>"]
    # non-ASCII goes through CLIP's byte-to-character table: é is bytes c3 a9
    assert tok.tokenize("café") == ["ca", "f", "Ã", "©</w>"]


def test_ids_are_pinned(tok):
    # Stored recordings name tokens by id; a change to WORDS or the trainer shows up here.
    ids = tok("a cute girl, pink hair").input_ids
    assert ids == [tok.bos_token_id, 320, 1545, 1863, 267, 2292, 1920, tok.eos_token_id]
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (2759, 2760, 2761)


def test_every_listed_word_is_one_token(tok):
    assert [w for w in WORDS if len(tok.tokenize(w)) != 1] == []


def test_special_tokens_and_padding_are_sd1_like(tok):
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.model_max_length) == (BOS, EOS, EOS, 77)
    ids = tok("a cat", padding="max_length", max_length=tok.model_max_length).input_ids
    assert ids == [tok.bos_token_id, *tok.convert_tokens_to_ids(["a</w>", "cat</w>"])] + [tok.eos_token_id] * 74
    assert tok.decode(tok("a cute girl, pink hair").input_ids, skip_special_tokens=True) == "a cute girl , pink hair"


def test_sdxl_second_tokenizer_pads_with_bang():
    tok2 = tiny_tokenizer(pad_token="!")
    ids = tok2("a cat", padding="max_length", max_length=6).input_ids
    bang = tok2.convert_tokens_to_ids("!")
    assert ids == [tok2.bos_token_id, *tok2.convert_tokens_to_ids(["a</w>", "cat</w>"]), tok2.eos_token_id, bang, bang]


def test_each_call_returns_an_independent_tokenizer():
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert a is not b
    a.add_tokens(["<my-embedding>"])
    assert len(a) == len(b) + 1
    assert b.tokenize("<my-embedding>") != ["<my-embedding>"]


@functools.cache
def _shared():
    # hypothesis runs a test many times per fixture instance; build the tokenizer once here
    return tiny_tokenizer()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40))
def test_ascii_text_never_maps_to_unknown(text):
    tok = _shared()
    if "</w>" in text or "<|" in text:
        return
    tokens = tok.tokenize(text)
    ids = tok.convert_tokens_to_ids(tokens)
    assert tok.unk_token_id not in ids
    assert "".join(tokens).replace("</w>", "") == text.lower()


def test_ids_are_the_same_in_another_process(tok):
    code = "from dumpunet.recorder.tokenizer import tiny_tokenizer as t; print(t()('a cute girl, zyx café').input_ids)"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == str(tok("a cute girl, zyx café").input_ids)


# --- SD's real CLIP tokenizer, from the packaged vocabulary -------------------------------------------


def test_clip_tokenizer_gives_the_hub_tokenizers_ids():
    from dumpunet.recorder.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    # openai/clip-vit-large-patch14's ids for this prompt, as every SD1 pipeline sees them
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.model_max_length) == (
        49408, 49406, 49407, 49407, 77)
    assert clip_tokenizer(pad_token="!").pad_token_id == 0  # SD2 / SDXL's OpenCLIP tokenizer
    assert tok.tokenize("(masterpiece:1.2), pink hair") == [
        "(</w>", "masterpiece</w>", ":</w>", "1</w>", ".</w>", "2</w>", "),</w>", "pink</w>", "hair</w>"]


def test_missing_vocabulary_says_what_to_install(monkeypatch):
    from dumpunet.errors import ModelError
    from dumpunet.recorder import tokenizer

    monkeypatch.setattr(tokenizer, "VOCAB_DISTRIBUTIONS", (("no-such-dist-dumpunet", "x/bpe.txt.gz"),))
    with pytest.raises(ModelError) as err:
        tokenizer.clip_vocab_file()
    assert str(err.value) == (
        "the CLIP tokenizer vocabulary (bpe_simple_vocab_16e6.txt.gz) is not installed: it comes with any of "
        "no-such-dist-dumpunet; pip install openai-clip (no torch requirement; the record extra includes it)"
    )


def test_a_different_vocabulary_file_is_refused(monkeypatch, tmp_path):
    from dumpunet.errors import ModelError
    from dumpunet.recorder import tokenizer

    fake = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    fake.write_bytes(b"\x1f\x8b not the vocabulary")
    monkeypatch.setattr(tokenizer, "clip_vocab_file", lambda: fake)
    monkeypatch.setattr(tokenizer, "_clip_vocab_and_merges", tokenizer._clip_vocab_and_merges.__wrapped__)
    with pytest.raises(ModelError) as err:
        tokenizer.clip_tokenizer()
    assert str(err.value) == f"{fake} is not OpenAI's CLIP vocabulary (its sha256 differs from 924691ac288e...)"

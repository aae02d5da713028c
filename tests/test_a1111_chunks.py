"""A1111's 75-token chunks on synthetic token ids, and the ``explain`` description (no torch)."""

from __future__ import annotations

import pytest

from dumpunet.a1111_chunks import explain_a1111, split_chunks
from dumpunet.a1111_prompts import Piece

BOS, EOS, PAD, COMMA, WORD = 1, 2, 0, 9, 5


def layout(pieces, tokenized, pad=EOS):
    return split_chunks(pieces, tokenized, bos=BOS, eos=EOS, pad=pad, comma=COMMA)


def row(content, pad=EOS):
    """An independent 77-token chunk: BOS, content, EOS, then the pad token."""
    return (BOS, *content, EOS, *[pad] * (75 - len(content)))


def test_chunks_hold_75_tokens_and_pad_after_the_first_eos():
    chunks = layout([Piece("x", 1.0)], [[WORD] * 120], pad=PAD)
    assert [c.ids for c in chunks] == [row([WORD] * 75, PAD), row([WORD] * 45, PAD)]
    assert [len(c.weights) for c in chunks] == [77, 77]
    assert layout([Piece("x", 1.0)], [[WORD] * 75])[0].ids == row([WORD] * 75)
    assert len(layout([Piece("x", 1.0)], [[WORD] * 76])) == 2
    assert [c.ids for c in layout([Piece("", 1.0)], [[]])] == [row([])]


def test_the_comma_rule():
    near = [WORD] * 60 + [COMMA] + [WORD] * 30  # comma 15 tokens before the end of chunk 1
    assert [c.ids for c in layout([Piece("x", 1.0)], [near])] == [row([WORD] * 60 + [COMMA]), row([WORD] * 30)]
    far = [WORD] * 54 + [COMMA] + [WORD] * 30  # 21 tokens before the end: no move
    assert [c.ids for c in layout([Piece("x", 1.0)], [far])] == [row(far[:75]), row(far[75:])]
    edge = [WORD] * 55 + [COMMA] + [WORD] * 30  # exactly 20 tokens before the end: moves
    assert layout([Piece("x", 1.0)], [edge])[0].ids == row([WORD] * 55 + [COMMA])


def test_weights_and_origins_follow_the_tokens_and_break_closes_a_chunk():
    pieces = [Piece("a", 1.5), Piece("BREAK", 1.0, True), Piece("b", 0.5)]
    chunks = layout(pieces, [[WORD, WORD], [], [WORD + 1]])
    assert [c.ids for c in chunks] == [row([WORD, WORD]), row([WORD + 1])]
    assert chunks[0].weights[:4] == (1.0, 1.5, 1.5, 1.0)
    assert chunks[1].weights[:3] == (1.0, 0.5, 1.0)
    assert chunks[0].pieces[:4] == (-1, 0, 0, -1) and chunks[1].pieces[:3] == (-1, 2, -1)
    # a trailing BREAK adds no empty chunk; a leading one gives an empty first chunk
    assert len(layout(pieces[:2], [[WORD], []])) == 1
    assert [c.ids for c in layout(pieces[1:], [[], [WORD]])] == [row([]), row([WORD])]


def test_explain_lists_schedule_pieces_and_notes():
    ex = explain_a1111("a [(cute:1.2)|girl] BREAK x", 3)
    assert [(e["until_step"], e["text"]) for e in ex["schedule"]] == [
        (1, "a (cute:1.2) BREAK x"),
        (2, "a girl BREAK x"),
        (3, "a (cute:1.2) BREAK x"),
    ]
    assert ex["notes"] == []
    assert ex["schedule"][0]["pieces"] == [
        {"text": "a ", "weight": 1.0, "break": False},
        {"text": "cute", "weight": 1.2, "break": False},
        {"text": "BREAK", "weight": 1.0, "break": True},
        {"text": "x", "weight": 1.0, "break": False},
    ]


def test_explain_notes_what_was_taken_as_text():
    ex = explain_a1111("a) | [b:2]", 4)
    assert ex["schedule"] == [
        {"until_step": 4, "text": "a) | [b:2]", "pieces": [
            {"text": "a) | ", "weight": 1.0, "break": False},
            {"text": "b:2", "weight": pytest.approx(1 / 1.1), "break": False},
        ]},
    ]
    assert ex["notes"] == [
        "the prompt does not fit A1111's editing grammar (a '|' outside brackets, or a trailing '\\'): no prompt editing",
        "')' at column 2 closes nothing: taken as text",
    ]


def test_explain_shows_chunks_with_a_tokenizer():
    pytest.importorskip("transformers")
    from dumpunet.recorder.tokenizer import tiny_tokenizer

    ex = explain_a1111("(cute:1.5) girl BREAK pink hair", 5, tokenizer=tiny_tokenizer())
    assert ex["schedule"][0]["chunks"] == [
        [{"token": "cute</w>", "weight": 1.5}, {"token": "girl</w>", "weight": 1.0}],
        [{"token": "pink</w>", "weight": 1.0}, {"token": "hair</w>", "weight": 1.0}],
    ]


def test_token_labels_cover_77_n_tokens_with_their_chunk():
    pytest.importorskip("transformers")
    from dumpunet.a1111_chunks import token_labels, tokenize_chunks
    from dumpunet.a1111_prompts import parse_emphasis
    from dumpunet.recorder.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    labels = token_labels(tok, tokenize_chunks(tok, parse_emphasis("(cute:1.5) girl BREAK pink hair").pieces))
    assert len(labels) == 154
    assert [lab["chunk"] for lab in labels] == [0] * 77 + [1] * 77
    assert [(lab["token"], lab["weight"]) for lab in labels[:4]] == [
        ("<|startoftext|>", 1.0), ("cute</w>", 1.5), ("girl</w>", 1.0), ("<|endoftext|>", 1.0)]
    assert [lab["token"] for lab in labels[77:81]] == ["<|startoftext|>", "pink</w>", "hair</w>", "<|endoftext|>"]
    assert [lab["piece"] for lab in labels[77:81]] == [-1, 3, 3, -1]


def test_a_multi_vector_embedding_is_never_split_across_chunks():
    # 73 words, then a 3-vector embedding (ids 50, 51, 52) and one more word: as A1111, the
    # embedding does not fit in the 2 places left, so chunk 1 closes after the 73 words
    pieces = [Piece("w " * 73 + "emb x", 1.3)]
    tokens = [[7] * 73 + [50, 51, 52, 8]]
    chunks = split_chunks(pieces, tokens, bos=1, eos=2, pad=2, comma=None, embeddings=[{73: 3}])
    assert chunks[0].ids[1:75] == (7,) * 73 + (2,)
    assert chunks[1].ids[:6] == (1, 50, 51, 52, 8, 2)
    assert chunks[1].weights[1:5] == (1.3,) * 4
    plain = split_chunks(pieces, tokens, bos=1, eos=2, pad=2, comma=None)  # without the span: cut at 75
    assert plain[0].ids[74:] == (50, 51, 2) and plain[1].ids[1] == 52

"""A1111's 75-token chunks, and what ``explain`` shows of an A1111 prompt; no torch.

A prompt's pieces (:func:`dumpunet.a1111_prompts.parse_emphasis`) are tokenized one by one,
without start/end tokens, and laid out in chunks of 75 tokens (A1111, ``sd_hijack_clip.py``):
when a chunk is full and the next token is not a comma, the tokens after the chunk's last comma
move to the next chunk if that comma is among the chunk's last 20 tokens; ``BREAK`` closes the
chunk; a multi-vector textual-inversion embedding that does not fit in the current chunk starts
the next one; a prompt of exactly 75 tokens is one chunk, and the empty prompt is one chunk. Each chunk
becomes ``BOS + 75 tokens (padded with EOS) + EOS`` = 77 tokens, and where the tokenizer pads
with another token (SD2, SDXL's second encoder) every token after the first EOS becomes it.

Examples
--------
>>> from dumpunet.a1111_prompts import Piece
>>> chunks = split_chunks([Piece("a", 2.0)], [[7, 8]], bos=1, eos=2, pad=0, comma=None)
>>> chunks[0].ids[:5], chunks[0].weights[:4], len(chunks[0].ids)
((1, 7, 8, 2, 0), (1.0, 2.0, 2.0, 1.0), 77)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dumpunet.a1111_networks import extract_networks
from dumpunet.a1111_prompts import Piece, parse_emphasis, prompt_schedule

__all__ = ["CHUNK", "Chunk", "a1111_summary", "expand_embeddings", "explain_a1111", "split_chunks", "token_labels",
           "tokenize_chunks"]

CHUNK = 75
"""Prompt tokens per chunk; with its start and end token a chunk is 77 tokens."""
COMMA_BACKTRACK = 20  # A1111's default "comma_padding_backtrack"


@dataclass(frozen=True)
class Chunk:
    """One 77-token chunk: token ids, their weights, and the piece each token comes from (-1: added)."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    pieces: tuple[int, ...]


def split_chunks(
    pieces: Sequence[Piece],
    tokenized: Sequence[Sequence[int]],
    *,
    bos: int,
    eos: int,
    pad: int,
    comma: int | None,
    embeddings: Sequence[Mapping[int, int]] | None = None,
) -> list[Chunk]:
    """Lay out tokenized pieces in 77-token chunks by A1111's rules (see the module docstring).

    ``embeddings`` gives, per piece, the positions where a multi-vector textual-inversion
    embedding starts and its number of tokens: A1111 never splits one across two chunks, it
    starts a new chunk when the embedding does not fit in the current one.

    Examples
    --------
    >>> p = [Piece("x", 1.0), Piece("BREAK", 1.0, True), Piece("y", 2.0)]
    >>> [c.ids[:4] for c in split_chunks(p, [[5], [], [6]], bos=1, eos=2, pad=0, comma=9)]
    [(1, 5, 2, 0), (1, 6, 2, 0)]
    """
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    origin: list[int] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, origin, last_comma
        fill = CHUNK - len(ids)
        row = [bos, *ids, *[eos] * fill, eos]
        first_eos = len(ids) + 1
        row[first_eos + 1 :] = [pad] * (len(row) - first_eos - 1)
        chunks.append(Chunk(tuple(row), (1.0, *weights, *[1.0] * fill, 1.0), (-1, *origin, *[-1] * (fill + 1))))
        ids, weights, origin, last_comma = [], [], [], -1

    for index, (piece, tokens) in enumerate(zip(pieces, tokenized)):
        if piece.is_break:
            close()
            continue
        spans = embeddings[index] if embeddings is not None else {}
        inside = 0  # tokens of the current embedding still to place
        for k, token in enumerate(tokens):
            if inside:
                inside -= 1
                ids.append(token)
                weights.append(piece.weight)
                origin.append(index)
                continue
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved = ids[cut:], weights[cut:], origin[cut:]
                ids, weights, origin = ids[:cut], weights[:cut], origin[:cut]
                close()
                ids, weights, origin = (list(x) for x in moved)
            if len(ids) == CHUNK or len(ids) + spans.get(k, 1) > CHUNK:
                close()
            inside = spans.get(k, 1) - 1
            ids.append(token)
            weights.append(piece.weight)
            origin.append(index)
    if ids or not chunks:
        close()
    return chunks


def expand_embeddings(tokenizer: Any, text: str) -> str:
    """Spell out the extra tokens of multi-vector textual-inversion embeddings in ``text``.

    diffusers loads an embedding of ``n`` vectors as the tokens ``name``, ``name_1``, ...
    ``name_{n-1}`` and rewrites ``name`` in a prompt into all of them before tokenizing
    (``TextualInversionLoaderMixin.maybe_convert_prompt``); this is the same rewrite, so a
    prompt read A1111's way gives the encoder every vector too.

    Examples
    --------
    >>> class Tok:
    ...     added_tokens_encoder = {"emb": 100, "emb_1": 101}
    ...     def tokenize(self, text):
    ...         return text.split()
    >>> expand_embeddings(Tok(), "a emb girl")
    'a emb emb_1 girl'
    """
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    if not any(f"{token}_1" in added for token in added):
        return text
    for token in set(tokenizer.tokenize(text)):
        if token in added:
            replacement, i = token, 1
            while f"{token}_{i}" in added:
                replacement += f" {token}_{i}"
                i += 1
            text = text.replace(token, replacement)
    return text


def tokenize_chunks(tokenizer: Any, pieces: Sequence[Piece]) -> list[Chunk]:
    """Tokenize ``pieces`` with a CLIP tokenizer (transformers') and lay them out in chunks."""
    texts = [expand_embeddings(tokenizer, p.text) for p in pieces]
    tokenized = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]
    comma = tokenizer.get_vocab().get(",</w>")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    spans = _embedding_spans(tokenizer)
    embeddings = [{k: spans[t] for k, t in enumerate(ids) if t in spans} for ids in tokenized] if spans else None
    return split_chunks(pieces, tokenized, bos=bos, eos=eos, pad=pad, comma=comma, embeddings=embeddings)


def _embedding_spans(tokenizer: Any) -> dict[int, int]:
    """The first token id of every multi-vector embedding (``name`` with ``name_1`` ...), and its length."""
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    spans = {}
    for token, first in added.items():
        n = 1
        while f"{token}_{n}" in added:
            n += 1
        if n > 1:
            spans[first] = n
    return spans


def explain_a1111(prompt: str, steps: int, *, emphasis: str = "original", tokenizer: Any = None) -> dict[str, Any]:
    """Describe how A1111 reads ``prompt`` over ``steps`` steps, as plain JSON values.

    For each schedule entry: the text, its weighted pieces and, with a ``tokenizer``, its chunks
    (each chunk's prompt tokens with their weights). ``notes`` say what was taken literally.

    Examples
    --------
    >>> ex = explain_a1111("a [(cute:1.2):3] girl", 10)
    >>> [(e["until_step"], e["text"]) for e in ex["schedule"]]
    [(3, 'a  girl'), (10, 'a (cute:1.2) girl')]
    >>> ex["schedule"][1]["pieces"][1]
    {'text': 'cute', 'weight': 1.2, 'break': False}
    """
    networks = extract_networks(prompt)
    schedule = prompt_schedule(networks.text, steps)
    notes = list(schedule.notes)
    entries = []
    for end, text in schedule.entries:
        parsed = parse_emphasis(text, mode=emphasis)
        notes.extend(n for n in parsed.notes if n not in notes)
        entry: dict[str, Any] = {
            "until_step": end,
            "text": text,
            "pieces": [{"text": p.text, "weight": p.weight, "break": p.is_break} for p in parsed.pieces],
        }
        if tokenizer is not None:
            chunks = tokenize_chunks(tokenizer, parsed.pieces)
            entry["chunks"] = [
                [
                    {"token": tok, "weight": w}
                    for tok, w, origin in zip(tokenizer.convert_ids_to_tokens(list(c.ids)), c.weights, c.pieces)
                    if origin >= 0
                ]
                for c in chunks
            ]
        entries.append(entry)
    return {"prompt": prompt, "steps": steps, "emphasis": emphasis, "loras": [t.to_json() for t in networks.loras],
            "schedule": entries, "notes": notes}


def token_labels(tokenizer: Any, chunks: Sequence[Chunk]) -> list[dict[str, Any]]:
    """Label every one of the ``77 n`` tokens of ``chunks``: id, string, chunk, weight, piece.

    A token's chunk is also its position // 77, so a store's token row of ``77 n`` ids and
    strings says which chunk each token belongs to without another field.

    Examples
    --------
    >>> from dumpunet.a1111_prompts import Piece
    >>> class Tok:
    ...     def convert_ids_to_tokens(self, ids):
    ...         return [f"t{i}" for i in ids]
    >>> chunks = split_chunks([Piece("a", 1.5)], [[7] * 76], bos=1, eos=2, pad=2, comma=None)
    >>> labels = token_labels(Tok(), chunks)
    >>> len(labels), labels[1], labels[78]["chunk"], labels[78]["position"]
    (154, {'id': 7, 'token': 't7', 'chunk': 0, 'position': 1, 'weight': 1.5, 'piece': 0}, 1, 1)
    """
    out = []
    for n, chunk in enumerate(chunks):
        strings = tokenizer.convert_ids_to_tokens(list(chunk.ids))
        for k, (i, s, w, p) in enumerate(zip(chunk.ids, strings, chunk.weights, chunk.pieces)):
            out.append({"id": i, "token": s, "chunk": n, "position": k, "weight": w, "piece": p})
    return out


def a1111_summary(explained: dict[str, Any]) -> str | None:
    """One line on what A1111 syntax an :func:`explain_a1111` result uses; None for a plain prompt.

    Examples
    --------
    >>> a1111_summary(explain_a1111("a (cute:1.3) girl BREAK [red:blue:5] hair", 10))
    'weights cute:1.3; 1 BREAK; 2 schedule entries (steps 5, 10)'
    >>> a1111_summary(explain_a1111("a cute girl", 10)) is None
    True
    """
    weighted: dict[str, float] = {}
    breaks = sum(piece["break"] for piece in explained["schedule"][0]["pieces"])
    for entry in explained["schedule"]:
        for piece in entry["pieces"]:
            text = " ".join(piece["text"].split())  # one line, also for a prompt written over several
            if piece["weight"] != 1.0 and text:
                weighted.setdefault(text, round(piece["weight"], 4))
    parts = [f"weights {', '.join(f'{t}:{w:g}' for t, w in weighted.items())}"] if weighted else []
    if breaks:
        parts.append(f"{breaks} BREAK")
    if len(explained["schedule"]) > 1:
        ends = ", ".join(str(e["until_step"]) for e in explained["schedule"])
        parts.append(f"{len(explained['schedule'])} schedule entries (steps {ends})")
    for lora in explained.get("loras", []):
        te, unet = lora["te_weight"], lora["unet_weight"]
        parts.append(f"LoRA {lora['name']} weight {te:g}" + (f" (U-Net {unet:g})" if unet != te else ""))
    parts += list(explained["notes"])
    return "; ".join(parts) or None

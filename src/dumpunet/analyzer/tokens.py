"""Token labels and token selection for attention views, without a tokenizer.

The store keeps the token strings the text encoder read (CLIP BPE: ``girl</w>`` ends a word).
A selection is a comma-separated list of words of the prompt (``pink,hair``; a word split into
several tokens selects all of them), token indices and index ranges (``1-5``, ``0-76(+4)``).
The default is the prompt's own tokens: no start/end token, no padding; for an empty prompt (an
unset negative prompt) the start and end tokens, which are all the U-Net saw.

Examples
--------
>>> toks = ["<|startoftext|>", "a</w>", "pink</w>", "m", "ars</w>", "<|endoftext|>"] + ["<|endoftext|>"] * 3
>>> select_tokens("", toks, 6)
[1, 2, 3, 4]
>>> select_tokens("mars, 0", toks, 6)
[0, 3, 4]
>>> select_tokens("", ["<|startoftext|>", "<|endoftext|>", "<|endoftext|>"], 2)
[0, 1]
>>> [label(toks[i]) for i in (0, 2, 5)]
['<start>', 'pink', '<end>']
"""

from __future__ import annotations

from dumpunet.errors import OptionError, SelectionError
from dumpunet.specs import INT_ITEM, parse_ints

_SPECIAL = {"<|startoftext|>": "<start>", "<|endoftext|>": "<end>"}


MAX_WORD_CHARS = 200
"""Longest --word (all its comma-separated words together); a prompt's word is far shorter."""


def shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for messages that quote user text."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_word(word: str) -> str:
    """Return ``word`` if it names something (a word of the prompt or token indices); else an :class:`OptionError`.

    An empty selection means "every token" for ``--tokens``, but a heatmap of every token is
    not the heatmap of a word.
    """
    if not isinstance(word, str) or not any(part.strip() for part in word.split(",")):
        raise OptionError(f"--word needs a word of the prompt or token indices, got {word!r}")
    if len(word) > MAX_WORD_CHARS:
        raise OptionError(f"--word {shorten(word)!r} is {len(word)} characters long; a word of the prompt is at "
                          f"most {MAX_WORD_CHARS}")
    return word


def label(token: str) -> str:
    """A token as people read it: ``girl</w>`` -> ``girl``, ``<|startoftext|>`` -> ``<start>``."""
    if token in _SPECIAL:
        return _SPECIAL[token]
    return token[:-4] if token.endswith("</w>") else token


def _word_spans(word: str, tokens: list[str], length: int) -> list[list[int]]:
    """Runs of tokens that spell ``word`` as whole words (case-insensitive, spaces ignored)."""
    target = "".join(word.lower().split())
    spans: list[list[int]] = []
    for i in range(1, length):
        if i > 1 and not tokens[i - 1].endswith("</w>"):
            continue  # a match must start a word
        text = ""
        for j in range(i, length):
            if tokens[j] in _SPECIAL:
                break
            text += label(tokens[j]).lower()
            if not target.startswith(text):
                break
            if text == target and tokens[j].endswith("</w>"):
                spans.append(list(range(i, j + 1)))
                break
    return spans


def select_tokens(spec: str, tokens: list[str], length: int) -> list[int]:
    """Token positions a selection names, ascending; errors list the prompt's words."""
    if not spec.strip():
        return list(range(1, length - 1)) or list(range(max(1, length)))
    chosen: set[int] = set()
    for part in spec.split(","):
        if not part.strip():
            continue
        if INT_ITEM.match(part):
            chosen.update(parse_ints(part.strip(), 0, len(tokens) - 1, noun="token", what="token selection"))
            continue
        spans = _word_spans(part, tokens, length)
        if not spans:
            words = " ".join(label(t) for t in tokens[1 : max(1, length - 1)])
            have = f"its tokens are: {words}" if words else "the prompt is empty"
            raise SelectionError(
                f"{shorten(part.strip())!r} is not a word of the prompt; {have} (or give token indices 0..{len(tokens) - 1})"
            )
        for span in spans:
            chosen.update(span)
    return sorted(chosen)


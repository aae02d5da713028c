"""Prompt files for ``dumpunet record --prompts``: one prompt a line, or CSV / JSONL rows.

- A ``.csv`` file has a header row naming its columns: ``prompt`` (required),
  ``negative_prompt`` and ``seed`` (optional). An empty ``seed`` cell means "the command line's".
- A ``.jsonl`` file holds one JSON object a line with the keys ``prompt`` (required),
  ``negative_prompt`` and ``seed`` (optional; null means "the command line's").
- Any other file is plain text: each line is a prompt, surrounding whitespace stripped; blank
  lines and lines starting with ``#`` are skipped.

A row without its own negative prompt or seed takes the command line's ``--negative-prompt`` and
``--seed`` (:meth:`PromptList.resolved`). Per-block groups ``(~: ... :~)`` are checked here, so a
syntax error names the file and line before a model loads. This module imports no torch.

Examples
--------
>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "prompts.txt")
>>> _ = open(path, "w").write("# cats first\\na cat\\n\\na (~: M00: cute :~) dog\\n")
>>> [(r.line, r.prompt) for r in read_prompt_list(path).rows]
[(2, 'a cat'), (4, 'a (~: M00: cute :~) dog')]
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dumpunet.a1111_networks import extract_networks
from dumpunet.errors import OptionError, PromptListError, SyntaxErrorWithCaret
from dumpunet.options import option
from dumpunet.prompts import parse_layer_prompt
from dumpunet.store.location import Location

__all__ = ["COLUMNS", "PromptList", "PromptListOptions", "PromptRow", "option_differences", "plural", "read_prompt_list",
           "run_name"]

COLUMNS = ("prompt", "negative_prompt", "seed")
"""The columns of a CSV file and the keys of a JSONL object (``prompt`` required)."""

_SEED = re.compile(r"\s*\d+\s*")


@dataclass(frozen=True, kw_only=True)
class PromptListOptions:
    """``record --prompts FILE`` and where its runs go (``--out`` one store, or ``--out-dir`` one store a prompt)."""

    prompts: Path | None = field(default=None, metadata=option(
        "Record every prompt of this file (one a line; or .csv/.jsonl with prompt, negative_prompt, seed) with the "
        "same options: runs p0000, p0001, ... of one store (sweep: p0000-base, p0000-IN00, ...); the same command "
        "again records only what is missing.", type=Path))
    out_dir: Location | None = field(default=None, metadata=option(  # a URL is parsed as one, then refused by record
        "With --prompts: one store a prompt in this folder, p0000.zarr, p0001.zarr, ... (instead of --out).", type=Location))

    def __post_init__(self) -> None:
        if self.out_dir is not None and self.prompts is None:
            raise OptionError("--out-dir goes with --prompts (one store a prompt); give --out for one recording")


def plural(n: int, noun: str) -> str:
    """``1 prompt``, ``3 prompts``.

    >>> plural(1, "prompt"), plural(3, "prompt")
    ('1 prompt', '3 prompts')
    """
    return f"{n} {noun}{'' if n == 1 else 's'}"


def run_name(index: int) -> str:
    """The name of prompt ``index``'s run (or store, with ``--out-dir``).

    >>> run_name(0), run_name(12345)
    ('p0000', 'p12345')
    """
    return f"p{index:04d}"


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a prompt file; ``None`` fields take the command line's value."""

    line: int  # 1-based line of the file where the row starts
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class PromptList:
    """The rows of one prompt file, in file order."""

    source: Path
    rows: tuple[PromptRow, ...]

    def resolved(self, negative_prompt: str, seed: int) -> list[tuple[str, str, int]]:
        """Every row as ``(prompt, negative prompt, seed)``, the given values filling what a row leaves out.

        >>> PromptList(Path("p.txt"), (PromptRow(1, "a"), PromptRow(2, "b", "ugly", 7))).resolved("blurry", 3)
        [('a', 'blurry', 3), ('b', 'ugly', 7)]
        """
        return [(r.prompt, negative_prompt if r.negative_prompt is None else r.negative_prompt,
                 seed if r.seed is None else r.seed) for r in self.rows]

    def sha256(self, negative_prompt: str, seed: int) -> str:
        """A digest of the resolved rows: two lists that would record the same runs have the same digest.

        >>> a = PromptList(Path("a.txt"), (PromptRow(1, "x"),))
        >>> b = PromptList(Path("b.csv"), (PromptRow(3, "x", seed=5),))
        >>> a.sha256("", 5) == b.sha256("", 5), a.sha256("", 5) == a.sha256("", 6)
        (True, False)
        """
        doc = json.dumps(self.resolved(negative_prompt, seed), ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()

    def head(self, count: int) -> PromptList:
        """The list's first ``count`` rows: what a list that grew by appended rows was before.

        >>> rows = (PromptRow(1, "a"), PromptRow(2, "b"), PromptRow(4, "c"))
        >>> grown, before = PromptList(Path("p.txt"), rows), PromptList(Path("p.txt"), rows[:2])
        >>> grown.head(2).sha256("", 1) == before.sha256("", 1), grown.sha256("", 1) == before.sha256("", 1)
        (True, False)
        """
        return PromptList(self.source, self.rows[:count])

    def error(self, row: PromptRow, exc: Exception) -> PromptListError:
        """``exc`` (raised for ``row``) as an error naming this file and the row's line, its caret kept."""
        if isinstance(exc, SyntaxErrorWithCaret):
            return PromptListError(f"{exc.kind}: {exc.message}", exc.text, exc.pos, length=exc.length,
                                   source=str(self.source), line=row.line)
        return PromptListError(str(exc), source=str(self.source), line=row.line)


def read_prompt_list(path: str | os.PathLike[str]) -> PromptList:
    """Read a prompt file (text, ``.csv`` or ``.jsonl`` by its name), checking every row.

    Raises :class:`~dumpunet.errors.PromptListError` naming the file, the line and (where there
    is one) the place in it: bad CSV or JSON, an unknown column, a bad seed, a per-block prompt
    that does not parse; :class:`~dumpunet.errors.OptionError` for a file that cannot be read or
    holds no prompt.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8-sig")  # a BOM (Excel's CSV) is not part of the first column's name
    except UnicodeDecodeError as exc:
        raise OptionError(f"--prompts {source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise OptionError(f"--prompts {source}: cannot read it ({exc.strerror or exc})") from None
    suffix = source.suffix.lower()
    reader = _read_csv if suffix == ".csv" else _read_jsonl if suffix == ".jsonl" else _read_text
    rows = tuple(reader(text, str(source)))
    if not rows:
        skipped = "" if suffix in (".csv", ".jsonl") else " (blank lines and # comments are skipped)"
        raise OptionError(f"--prompts {source} holds no prompt{skipped}")
    for row in rows:
        for column, value in (("prompt", row.prompt), ("negative_prompt", row.negative_prompt)):
            if value is None:
                continue
            where = "" if suffix not in (".csv", ".jsonl") else f"{column}: "
            try:
                parse_layer_prompt(value)
                tags = extract_networks(value).loras
            except SyntaxErrorWithCaret as exc:
                raise PromptListError(f"{where}{exc.kind}: {exc.message}", exc.text, exc.pos, length=exc.length,
                                      source=str(source), line=row.line) from None
            if tags:  # the model loads once for every prompt, with the same LoRAs
                raise PromptListError(f"{where}a prompt file cannot load LoRAs per prompt ({tags[0].text}); give "
                                      "--lora FILE:WEIGHT for every prompt", value, tags[0].pos,
                                      length=len(tags[0].text), source=str(source), line=row.line)
    return PromptList(source, rows)


def _read_text(text: str, source: str) -> list[PromptRow]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        prompt = line.strip()
        if prompt and not prompt.startswith("#"):
            rows.append(PromptRow(number, prompt))
    return rows


def _read_jsonl(text: str, source: str) -> list[PromptRow]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptListError(f"bad JSON: {exc.msg}", line, exc.pos, source=source, line=number) from None
        if not isinstance(doc, dict):
            raise PromptListError(f"a line must be a JSON object like {{\"prompt\": \"a cat\"}}, got {type(doc).__name__}",
                                  line, 0, source=source, line=number)
        unknown = [k for k in doc if k not in COLUMNS]
        if unknown:
            raise PromptListError(f"unknown key {unknown[0]!r} (keys: {', '.join(COLUMNS)})", line,
                                  _find(line, json.dumps(unknown[0])), source=source, line=number)
        prompt, negative, seed = doc.get("prompt"), doc.get("negative_prompt"), doc.get("seed")
        if not isinstance(prompt, str):
            raise PromptListError(f"'prompt' must be a string, got {json.dumps(prompt)}" if "prompt" in doc
                                  else "no 'prompt' key", line, _find(line, '"prompt"'), source=source, line=number)
        if negative is not None and not isinstance(negative, str):
            raise PromptListError(f"'negative_prompt' must be a string, got {json.dumps(negative)}", line,
                                  _find(line, '"negative_prompt"'), source=source, line=number)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise PromptListError(f"'seed' must be a whole number 0 or more, got {json.dumps(seed)}", line,
                                  _find(line, '"seed"'), source=source, line=number)
        rows.append(PromptRow(number, prompt, negative, seed))
    return rows


def _read_csv(text: str, source: str) -> list[PromptRow]:
    lines = text.splitlines()
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise PromptListError(f"bad CSV: {exc}", source=source, line=reader.line_num) from None
    if header is None:
        return []
    names = [h.strip() for h in header]
    for i, name in enumerate(names):
        if name not in COLUMNS:
            raise PromptListError(f"unknown column {name!r} in the header (columns: {', '.join(COLUMNS)})", lines[0],
                                  _find(lines[0], header[i]), length=max(1, len(header[i])), source=source, line=1)
        if names.index(name) != i:
            raise PromptListError(f"column {name!r} twice in the header", lines[0], _find(lines[0], header[i], start=_find(lines[0], header[i]) + 1),
                                  source=source, line=1)
    if "prompt" not in names:
        raise PromptListError(f"the header names no 'prompt' column (columns: {', '.join(COLUMNS)})", lines[0], 0,
                              source=source, line=1)
    rows = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            raise PromptListError(f"bad CSV: {exc}", source=source, line=start) from None
        if cells is None:
            return rows
        if not any(c.strip() for c in cells):
            continue
        raw = lines[start - 1] if start <= len(lines) else ""
        if len(cells) != len(names):
            raise PromptListError(f"{len(cells)} fields, the header names {len(names)}", raw, len(raw),
                                  source=source, line=start)
        row = dict(zip(names, cells))
        seed_text = row.get("seed", "")
        if seed_text.strip() and not _SEED.fullmatch(seed_text):
            raise PromptListError(f"seed must be a whole number 0 or more (or empty), got {seed_text!r}", raw,
                                  _find(raw, seed_text), length=max(1, len(seed_text)), source=source, line=start)
        rows.append(PromptRow(start, row["prompt"], row.get("negative_prompt"),
                              int(seed_text) if seed_text.strip() else None))


def _find(line: str, needle: str, start: int = 0) -> int:
    """Where ``needle`` is in ``line`` (from ``start``), for the caret; 0 if it is not there verbatim."""
    i = line.find(needle, start)
    return max(i, 0)


FLAGS = {"loras": "--lora", "embeddings": "--embedding"}
"""Options whose flag is not ``--`` + the name with dashes."""


def option_differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two option sets (as JSON), one ``--flag now (recorded: value)`` each.

    >>> option_differences({"cfg": 7.0, "sampler": "Euler a"}, {"cfg": 5.0, "sampler": "Euler a"})
    ['--cfg 5.0 (recorded: 7.0)']
    """
    out = []
    for key in dict.fromkeys([*recorded, *now]):
        if recorded.get(key) != now.get(key):
            flag = FLAGS.get(key, "--" + key.replace("_", "-"))
            out.append(f"{flag} {_shown(now.get(key))} (recorded: {_shown(recorded.get(key))})")
    return out


def _shown(value: Any) -> str:
    if value is None:
        return "not given"
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, (int, float)) or isinstance(value, bool) else str(value)

"""The shell commands that README.md and docs/*.md show, read from their ```bash blocks.

A command is what a reader would type: lines ending in ``\\`` are joined, ``# comments`` are cut
(outside quotes), and a ``&&`` chain is split into its commands (the README's set-up line chains
the install and the demo). Each command keeps the document and line it starts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class DocCommand:
    doc: str  # path relative to the repository root
    line: int  # 1-based line of the document where the command starts
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def strip_comment(line: str) -> str:
    """``line`` without its shell comment: a ``#`` at the start or after a blank, outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def split_chain(command: str) -> list[str]:
    """The commands of an ``a && b && c`` chain (``&&`` inside quotes is text)."""
    parts, quote, start, i = [], "", 0, 0
    while i < len(command):
        ch = command[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif command.startswith("&&", i):
            parts.append(command[start:i].strip())
            start = i = i + 2
            continue
        i += 1
    parts.append(command[start:].strip())
    return [p for p in parts if p]


def bash_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of each ```bash block of a Markdown text."""
    blocks, current, indent, first = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if current is None:
            if fence and fence.group(2) == "bash":
                current, indent, first = [], fence.group(1), number + 1
        elif fence and fence.group(2) == "":
            blocks.append((first, current))
            current = None
        else:
            current.append(line.removeprefix(indent))
    if current is not None:
        raise ValueError(f"a ```bash block opened at line {first - 1} is never closed")
    return blocks


def commands_in(text: str, doc: str) -> list[DocCommand]:
    """The commands of every ```bash block of ``text``, in order."""
    found = []
    for first, lines in bash_blocks(text):
        pending, start = "", 0
        for offset, raw in enumerate(lines):
            line = strip_comment(raw)
            if not pending:
                start = first + offset
            if line.endswith("\\"):
                pending += (line[:-1].lstrip() if pending else line[:-1]).rstrip() + " "
                continue
            command = (pending + (line.lstrip() if pending else line)).strip()
            pending = ""
            found += [DocCommand(doc, start, part) for part in split_chain(command)]
        if pending:
            raise ValueError(
                f"{doc}:{start}: the block ends inside a continued command"
            )
    return found


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md, then docs/*.md by name: the order a reader meets them."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def doc_commands(root: Path = ROOT) -> list[DocCommand]:
    """Every command of the README's and docs' ```bash blocks, in document order."""
    return [
        c
        for path in doc_files(root)
        for c in commands_in(path.read_text(), str(path.relative_to(root)))
    ]

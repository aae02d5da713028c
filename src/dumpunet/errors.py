"""Every error dumpunet raises on purpose, under one base class.

The CLI turns :class:`DumpUnetError` into a one-line message and exit status 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DumpUnetError(Exception):
    """Base class of all errors that are the user's to fix."""


class SyntaxErrorWithCaret(DumpUnetError):
    """An error in a piece of user text, rendered with a caret under the problem.

    ``str(err)`` is::

        bad block spec: unknown block 'IN12'
          IN00-IN12(+2)
               ^
    """

    kind = "bad input"

    def __init__(self, message: str, text: str, pos: int, *, length: int = 1) -> None:
        self.message = message
        self.text = text
        self.pos = max(0, min(pos, len(text)))
        self.length = max(1, length)
        super().__init__(self.render())

    WIDTH = 100
    """Longer texts are shown as a window of this many characters around the caret."""

    def render(self) -> str:
        # Tabs, newlines and other control characters would move the caret or the terminal;
        # show each as one visible character so the caret stays under the problem.
        shown = "".join(c if c.isprintable() else (" " if c in "\t\n\r" else "\ufffd") for c in self.text)
        pos, length = self.pos, min(self.length, self.WIDTH)
        if len(shown) > self.WIDTH:
            start = max(0, min(pos - self.WIDTH // 2, len(shown) - self.WIDTH))
            end = start + self.WIDTH
            head, tail = ("…" if start > 0 else ""), ("…" if end < len(shown) else "")
            shown = head + shown[start:end] + tail
            pos = pos - start + len(head)
            length = max(1, min(length, end - self.pos))
        return f"{self.kind}: {self.message}\n  {shown}\n  {' ' * pos}{'^' * length}"


class SpecError(SyntaxErrorWithCaret, ValueError):
    """A block, layer or step spec that does not parse or names something unknown."""

    def __init__(self, message: str, text: str, pos: int, *, length: int = 1, what: str = "spec") -> None:
        self.kind = f"bad {what}"
        super().__init__(message, text, pos, length=length)


class ExpressionError(SyntaxErrorWithCaret, ValueError):
    """A colour expression that is not in the allowed subset."""

    kind = "bad expression"


class ColorSpecError(DumpUnetError, ValueError):
    """A colorization option that is unknown or out of range (method, transform, clamp, ...)."""


class OptionError(DumpUnetError, ValueError):
    """An option value that is unknown, out of range, unavailable here or not one the command takes
    (jobs, scale, sampler, device, dtype, size, ...)."""


class InfotextError(DumpUnetError, ValueError):
    """A1111 generation parameters that cannot be read: no such image, no parameters in it, a malformed field."""


class OutputError(DumpUnetError, OSError):
    """An output folder that cannot be used: a file, not creatable, or holding a foreign manifest."""


class PromptSyntaxError(SyntaxErrorWithCaret, ValueError):
    """A per-block prompt group that does not parse."""

    kind = "bad layer prompt"


class PromptListError(SyntaxErrorWithCaret, ValueError):
    """A row of a ``record --prompts`` file that does not read: bad CSV or JSON, a bad seed, a
    per-block prompt that does not parse. The message names the file and line; a caret marks the
    place where one is known::

        prompts.txt, line 3: bad layer prompt: unclosed group: '(~:' without a matching ':~)'
          a (~: M00: cute girl
            ^^^
    """

    def __init__(self, message: str, text: str | None = None, pos: int = 0, *, source: str, line: int,
                 length: int = 1) -> None:
        self.kind = f"{source}, line {line}"
        self.source, self.line = source, line
        self.has_caret = text is not None
        super().__init__(message, text or "", pos, length=length)

    def render(self) -> str:
        return super().render() if self.has_caret else f"{self.kind}: {self.message}"


class StoreError(DumpUnetError):
    """A store that is missing, foreign, newer than this version, or damaged."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The path holds no store at all."""


class DamagedChunkError(StoreError):
    """A chunk file of a completely written call that is missing, of the wrong size, undecodable or
    not a regular file; the message names the array, the call and the step."""


class IncompleteStepError(StoreError, LookupError):
    """A step exists in the store's range but was never completely written."""


class SelectionError(DumpUnetError, LookupError):
    """A block, step, token or run that the store does not hold."""


class ModelError(DumpUnetError):
    """A model that cannot be found or loaded."""


class RecordError(DumpUnetError):
    """Recording cannot start or cannot go on (existing output, disk full, size limit)."""

"""User-facing errors: each carries one-line messages, printed without a traceback.

Whatever the user supplied (a spec value or key, a ``--set`` text, a file name, a field of a
bundle) goes into a message through ``shown``, which keeps it on one line and short.
"""

from __future__ import annotations

from typing import Any

import attrs

SHOWN_LIMIT = 80  # characters of a value in a message
PATH_LIMIT = 240  # file names: longer, a deep path is still worth reading whole


def _bare(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def shown(value: Any, limit: int | None = SHOWN_LIMIT, quote: bool = True) -> str:
    """``value`` rendered for a one-line message.

    A string is shown as ``repr`` shows it (``quote=False``: without the quotes and with
    backslashes as they are, for file names and ``--set`` texts): newlines, tabs, control and
    other non-printable characters escaped (``\\n``, ``\\t``, ``\\x1b``; the surrogate
    standing for an undecodable byte of a file name as ``\\udcff``). Anything else is its
    ``repr``. Longer than ``limit`` characters (None: never cut), the middle is cut to an
    ellipsis and the full length follows: ``'aaaa…zz' (300 chars)``."""
    quoted = quote and isinstance(value, str)
    text = value if isinstance(value, str) else repr(value)
    render = repr if quoted else _bare
    out = render(text)
    if limit is None or len(out) <= limit:
        return out
    keep = len(text)
    while len(out) > limit and keep > 0:  # down to a bare ellipsis: one character may render as 10
        keep = max(0, min(keep - 1, keep * limit // len(out)))
        front = keep * 2 // 3
        out = render(text[:front] + "\u2026" + text[len(text) - (keep - front) :])
    return f"{out} ({len(text)} chars)"


def shown_path(path) -> str:
    """A file name (a path, a ``--results`` directory) for a message: ``shown`` unquoted, with
    a longer limit."""
    return shown(str(path), PATH_LIMIT, quote=False)


def one_line(text: str) -> str:
    """Defence in depth for a finished message: any character that would break the line
    (or the terminal) escaped; nothing cut. The real fix is ``shown`` at the source."""
    return text if text.isprintable() else shown(text, limit=None, quote=False)


@attrs.frozen
class Problem:
    """One problem in a spec, printed compiler-style: ``file:line:col: path: message``."""

    file: str
    line: int | None  # 1-based
    col: int | None  # 1-based
    path: str  # e.g. "sae.l1[2]"; "" for the document itself
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.col}"
        return one_line(f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}")


class UserError(Exception):
    """Bad input from the user: a message, exit status 2, no traceback."""

    exit_code = 2

    def lines(self) -> list[str]:
        return [one_line(str(self))]


class SpecError(UserError):
    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.col or 0, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class BundleError(UserError):
    """A bundle that cannot be used: missing, not a bundle, corrupt, from a newer schema."""


class SourceError(UserError):
    """A data source that cannot be prepared (corpus file, hub offline, ...)."""


class CellFailure(Exception):
    """A cell raised while training; carries the cell id."""

    def __init__(self, cell_id: str, reason: str):
        self.cell_id = cell_id
        self.reason = reason
        super().__init__(f"cell {cell_id}: {reason}")

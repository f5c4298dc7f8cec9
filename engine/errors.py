"""User-facing errors: each carries one-line messages, printed without a traceback."""

from __future__ import annotations

import attrs


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
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class UserError(Exception):
    """Bad input from the user: a message, exit status 2, no traceback."""

    exit_code = 2

    def lines(self) -> list[str]:
        return [str(self)]


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

"""What a long run shows while it works: bars on a terminal, plain lines elsewhere, or nothing.

The run loop talks to a ``Progress``: ``log(line)`` for messages and ``stage(name, total)`` for
countable work (sources prepared, cells finished, training steps of one group). Three kinds:

- ``RichProgress``: ``rich.progress`` bars with counts, elapsed time and ETA (a terminal);
  messages scroll above the bars.
- ``PlainProgress``: one plain line per message and per finished unit of a stage, with an ETA
  (not a terminal: CI logs, pipes). Transient stages (training steps) print nothing.
- ``QuietProgress``: nothing at all (``--quiet``: only the result is printed).

``for_stream(quiet, stream)`` picks one. Nothing here affects results.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Self, TextIO


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or done >= total:
        return ""
    left = elapsed / done * (total - done)
    return f", ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Stage:
    """A countable piece of work; ``advance`` as units finish; use as a context manager."""

    def __init__(self, name: str, total: int):
        self.name = name
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n

    def update(self, done: int) -> None:
        """Set the count (for a callback that reports totals, e.g. training steps)."""
        self.done = done

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Progress:
    """The interface the run loop uses; this base class shows nothing (``--quiet``)."""

    def log(self, line: str) -> None:
        pass

    def stage(self, name: str, total: int, transient: bool = False) -> Stage:
        return Stage(name, total)

    def close(self) -> None:
        pass


QuietProgress = Progress


class _PlainStage(Stage):
    def __init__(self, name: str, total: int, write: Callable[[str], None]):
        super().__init__(name, total)
        self.write = write

    def advance(self, n: int = 1, note: str = "") -> None:
        super().advance(n)
        eta = _eta(self.done, self.total, time.monotonic() - self.started)
        self.write(f"[{self.name} {self.done}/{self.total}{eta}]" + (f" {note}" if note else ""))


class PlainProgress(Progress):
    """Plain lines through ``write`` (default: stderr)."""

    def __init__(self, write: Callable[[str], None] | None = None):
        self.write = write or (lambda s: print(s, file=sys.stderr, flush=True))

    def log(self, line: str) -> None:
        self.write(line)

    def stage(self, name: str, total: int, transient: bool = False) -> Stage:
        return Stage(name, total) if transient else _PlainStage(name, total, self.write)


class _RichStage(Stage):
    def __init__(self, owner: RichProgress, name: str, total: int, transient: bool):
        super().__init__(name, total)
        self.owner = owner
        self.transient = transient
        self.task = owner.bars.add_task(owner.escape(name), total=total)

    def advance(self, n: int = 1, note: str = "") -> None:
        super().advance(n)
        self.owner.bars.update(self.task, advance=n)
        if note and not self.transient:
            self.owner.log(f"[{self.name} {self.done}/{self.total}] {note}")

    def update(self, done: int) -> None:
        super().update(done)
        self.owner.bars.update(self.task, completed=done)

    def close(self) -> None:
        if self.transient:
            self.owner.bars.remove_task(self.task)


class RichProgress(Progress):
    """``rich.progress`` bars on ``console`` (default: a terminal on stderr)."""

    def __init__(self, console=None):
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bars

        self.escape = escape
        self.console = console or Console(stderr=True)
        self.bars = Bars(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.started = False

    def _start(self) -> None:
        if not self.started:
            self.bars.start()
            self.started = True

    def log(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)

    def stage(self, name: str, total: int, transient: bool = False) -> Stage:
        self._start()
        return _RichStage(self, name, total, transient)

    def close(self) -> None:
        if self.started:
            self.bars.stop()
            self.started = False


def for_stream(quiet: bool, stream: TextIO | None = None) -> Progress:
    """Quiet -> nothing; a terminal -> bars; anything else -> plain lines on ``stream``."""
    if quiet:
        return QuietProgress()
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.console import Console

        return RichProgress(Console(file=stream))
    return PlainProgress(lambda s: print(s, file=stream, flush=True))

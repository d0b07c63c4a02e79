"""Progress bars on stderr (rich), for map() and batch watching. A display for a person, not a log: it
draws only when stderr is a terminal, unless forced."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


def _progress(force: bool) -> Progress:
    console = Console(file=sys.stderr, force_terminal=True if force else None)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), console=console,
                    transient=False, disable=not (force or console.is_terminal))


class MapProgress:
    def __init__(self, total: int | None, *, completed: int = 0, description: str = "jobs",
                 force: bool = False) -> None:
        self._progress = _progress(force)
        self._failed = 0
        self._task: TaskID = self._progress.add_task(description, total=total, completed=completed, failed=0)
        self._progress.start()

    def advance(self, succeeded: bool) -> None:
        self._failed += not succeeded
        self._progress.update(self._task, advance=1, failed=self._failed)

    def close(self) -> None:
        self._progress.stop()


class CountsProgress:
    """A batch's request_counts: total, and completed + failed so far."""

    def __init__(self, description: str, *, force: bool = False) -> None:
        self._progress = _progress(force)
        self._task = self._progress.add_task(description, total=None, failed=0)
        self._progress.start()

    def update(self, *, status: str, total: int, completed: int, failed: int) -> None:
        self._progress.update(self._task, description=status, total=total or None, completed=completed + failed,
                              failed=failed)

    def close(self) -> None:
        self._progress.stop()

"""One rich progress display for the long-running commands (explain, bench, demo)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from medxai.progress import ProgressFn

__all__ = ["progress_bars"]


@contextlib.contextmanager
def progress_bars() -> Iterator[ProgressFn]:
    """Yield ``progress(stage, done, total)``: one bar per stage, on stderr, removed at the end."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress

"""One rich progress display for the long-running commands (explain, bench, demo)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from medxai.progress import ProgressFn

__all__ = ["progress_bars"]


@contextlib.contextmanager
def progress_bars(eta: bool = False) -> Iterator[ProgressFn]:
    """Yield ``progress(stage, done, total)``: one bar per stage, on stderr, removed at the end; ``eta``
    adds the estimated time left (for stages whose units take similar time, such as cases)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    count = TextColumn("{task.completed}/{task.total}")
    columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn(), count, TimeElapsedColumn()]
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress

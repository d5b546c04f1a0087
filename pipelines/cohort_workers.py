"""Worker side of the cohort build: read one series and make its stack, in a pool of processes.

`build_case` runs in a worker (or in the parent with one worker) and never raises for a bad case: the
failure comes back as text, so the parent records it and goes on. `Workers` keeps a bounded number of
cases in flight (results wait for the parent to write them, so memory stays flat however large the
cohort) and starts a new pool when a worker dies (killed for memory, a crash in a decoder): the cases
in flight then fail with that reason and the rest go on.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

__all__ = ["CaseTask", "CaseOutcome", "build_case", "died_case", "Workers", "error_text", "DIED"]

R = TypeVar("R")
_TRANSFORMS: dict[Any, Any] = {}  # one CTStackTransform per stack config and process
_IN_WORKER = {"flag": False}
DIED = "the worker process handling it died (killed for memory, or a crash while decoding); rerun to retry"


@dataclass(frozen=True)
class CaseTask:
    """One case to build: its store row, the folder and UID of its series, the stack settings."""

    index: int
    source: str
    series_uid: str
    stack: Any  # medxai.transforms.CTStackConfig (picklable dataclass)
    skip_unreadable: bool = False


@dataclass
class CaseOutcome:
    """A built case (arrays) or a failed one (``error``)."""

    index: int
    image: np.ndarray | None = None  # float32 (C, S, S) in [0, 1]
    lung_mask: np.ndarray | None = None  # (C, S, S), 1 = lung
    slice_indices: np.ndarray | None = None  # (C,) source slice per channel
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def error_text(e: BaseException) -> str:
    """An exception and its causes as one line (what cases.csv keeps as the reason)."""
    parts: list[str] = []
    cur: BaseException | None = e
    while cur is not None and len(parts) < 5:
        msg = " ".join((str(cur).strip() or type(cur).__name__).split())
        if not any(msg in p for p in parts):
            parts.append(msg)
        cur = cur.__cause__
    return " Cause: ".join(parts)


def _transform(stack: Any) -> Any:
    if stack not in _TRANSFORMS:
        from medxai.transforms import CTStackTransform

        if _IN_WORKER["flag"]:
            import torch

            torch.set_num_threads(1)  # N workers on N cores: one thread each
        _TRANSFORMS[stack] = CTStackTransform(stack)
    return _TRANSFORMS[stack]


def build_case(task: CaseTask) -> CaseOutcome:
    """Read ``task``'s series and make its ``(C, S, S)`` stack; a failure is returned, not raised."""
    from dicom_io import read_series

    try:
        vol = read_series(task.source, task.series_uid, skip_unreadable=task.skip_unreadable)
        data = _transform(task.stack)(vol.array, vol.spacing, vol.origin, vol.direction)
        image = np.asarray(data["image"], dtype=np.float32)
        want = (len(task.stack.fractions), int(task.stack.size), int(task.stack.size))
        if image.shape != want or not np.isfinite(image).all():
            raise ValueError(f"the stack transform gave an array of shape {image.shape} (want {want}) or non-finite values")
        mask = data.get("lung_mask")
        return CaseOutcome(
            task.index,
            image,
            None if mask is None else np.asarray(mask, dtype=np.float32),
            np.asarray(data["slice_indices"], dtype=np.int64),
            list(vol.warnings),
        )
    except Exception as e:  # noqa: BLE001 - a bad case is recorded with its reason; the rest go on
        return CaseOutcome(task.index, error=error_text(e))


def _init_worker() -> None:
    _IN_WORKER["flag"] = True


class Workers:
    """``n`` worker processes (``n == 1``: everything runs in this process, in order).

    Use as a context manager; :meth:`map` yields ``(args, result)`` as results arrive.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._close(cancel=et is not None)

    def _close(self, cancel: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a forked copy of a parent that already ran torch can deadlock in its thread pools
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.n, mp_context=ctx, initializer=_init_worker)
        return self._pool

    def map(
        self, fn: Callable[..., R], items: Iterable[tuple[Any, ...]], died: Callable[[tuple[Any, ...]], R] | None = None
    ) -> Iterator[tuple[tuple[Any, ...], R]]:
        """Call ``fn(*args)`` for each ``args`` of ``items``; at most ``2 n`` in flight.

        ``died(args)`` gives the result of an item whose worker process died (default: the error
        is raised).
        """
        if self.n == 1:
            for args in items:
                yield args, fn(*args)
            return
        pending = iter(items)
        flight: dict[Future[R], tuple[Any, ...]] = {}
        while True:
            while len(flight) < 2 * self.n and (args := next(pending, None)) is not None:
                flight[self._get_pool().submit(fn, *args)] = args
            if not flight:
                return
            finished, _ = wait(flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                args = flight.pop(fut)
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    if died is None:
                        raise
                    # the pool's other cases fail the same way; the items not yet sent get a new pool
                    res = died(args)
                    self._close(cancel=True)
                yield args, res


def died_case(args: tuple[Any, ...]) -> CaseOutcome:
    """The outcome of a case whose worker process died."""
    return CaseOutcome(args[0].index, error=DIED)

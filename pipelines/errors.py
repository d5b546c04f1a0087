"""Errors of pipeline steps."""

from __future__ import annotations

__all__ = ["StepError"]


class StepError(RuntimeError):
    """A pipeline step failed; the message names the step, the cause is chained (``raise ... from e``)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step

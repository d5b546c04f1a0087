"""The one progress-callback type of medxai.

Long-running library calls (training, model loading, explaining) take an optional ``progress``
argument of type :data:`ProgressFn` and call it as ``progress(stage, done, total)``: ``stage`` names
what runs (``"teacher"``, ``"autoencoder"``, ``"agent"``, ``"nn_explainer"``, ...), ``done`` counts
the finished units of that stage (steps, epochs, cases) out of ``total``. The CLI turns the calls into
progress bars; library code never prints.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressFn"]

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``done`` of ``total`` units of ``stage`` are finished."""

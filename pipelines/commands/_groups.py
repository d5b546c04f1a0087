"""Shared command groups (sub-apps) that several command modules add commands to.

``get_train_app(app)`` returns the ``medxai train`` group, creating and registering it on first use,
so each module adds its own ``train <what>`` commands without touching a shared file;
``get_cohort_app(app)`` does the same for ``medxai cohort`` (build, explain, report).
"""

from __future__ import annotations

import typer

__all__ = ["get_train_app", "get_cohort_app"]

_GROUPS: dict[tuple[int, str], typer.Typer] = {}


def _group(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    key = (id(app), name)
    if key not in _GROUPS:
        sub = typer.Typer(name=name, help=help_text, no_args_is_help=True)
        app.add_typer(sub, name=name)
        _GROUPS[key] = sub
    return _GROUPS[key]


def get_train_app(app: typer.Typer) -> typer.Typer:
    """The ``train`` sub-group of ``app`` (created once per app)."""
    return _group(app, "train", "Train models (teacher, autoencoder, agent, explainers).")


def get_cohort_app(app: typer.Typer) -> typer.Typer:
    """The ``cohort`` sub-group of ``app`` (created once per app): many studies + an outcomes table."""
    return _group(app, "cohort", "Cohorts: DICOM studies + an outcomes CSV -> stacks, splits, explanations (docs/cohort.md).")

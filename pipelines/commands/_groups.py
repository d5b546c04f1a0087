"""Shared command groups (sub-apps) that several command modules add commands to.

``get_train_app(app)`` returns the ``medxai train`` group, creating and registering it on first use,
so each module adds its own ``train <what>`` commands without touching a shared file.
"""

from __future__ import annotations

import typer

__all__ = ["get_train_app"]

_GROUPS: dict[tuple[int, str], typer.Typer] = {}


def get_train_app(app: typer.Typer) -> typer.Typer:
    """The ``train`` sub-group of ``app`` (created once per app)."""
    key = (id(app), "train")
    if key not in _GROUPS:
        sub = typer.Typer(name="train", help="Train models (teacher, autoencoder, agent, explainers).", no_args_is_help=True)
        app.add_typer(sub, name="train")
        _GROUPS[key] = sub
    return _GROUPS[key]

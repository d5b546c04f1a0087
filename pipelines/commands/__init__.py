"""CLI commands, one module each.

Every module in this package defines ``register(app: typer.Typer) -> None`` and is found by
``pipelines.cli`` at start-up, so adding a command never touches a shared file. Modules import heavy
packages (torch, monai) inside the command functions only, to keep ``medxai --help`` and ingest fast.
"""

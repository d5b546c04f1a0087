"""``medxai digin-units``: DiG-IN's neuron visualisation of a class's top units (pipelines.digin_units)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.commands._options import trust_code_option


def register(app: typer.Typer) -> None:
    @app.command("digin-units")
    def units_cmd(
        config: Path = typer.Option(
            ..., "--config", "-c", help="Job config (its black box and generator), e.g. configs/ct_prognosis.yaml."
        ),
        source: Path = typer.Option(
            ..., "--input", "-i", help="Real inputs whose conditioning seeds the samples (as medxai explain reads them)."
        ),
        out: Path = typer.Option(
            ..., "-o", "--out", help="Output folder: one unit_<u>/ per unit (unit.png, unit.json, images.npz)."
        ),
        class_index: int | None = typer.Option(
            None, "--class", help="The class whose top units to show (default: the config's target_class)."
        ),
        top: int = typer.Option(3, "--top", min=1, help="How many units, by the head's weight for the class."),
        shard: str | None = typer.Option(
            None, "--shard", help="i/n: this process takes every n-th unit from the i-th (with torchrun, ranks split it further)."
        ),
        trust_code: bool = trust_code_option(),
    ) -> None:
        """Show what the top units of a class respond to: generator samples optimised to make each fire."""
        from rich.console import Console
        from rich.markup import escape

        from pipelines.commands._progress import progress_bars
        from pipelines.digin_units import run_units

        console = Console(highlight=False, soft_wrap=True)
        with progress_bars() as progress:
            written = run_units(
                config, source, out, class_index=class_index, top=top, shard=shard, trust_code=trust_code, progress=progress
            )
        for folder in written:
            console.print(f"wrote {escape(str(folder))}")
        console.print(f"{len(written)} unit(s) visualised (units already written are skipped)")

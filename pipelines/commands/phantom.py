"""``medxai phantom {ct,fundus}``: write phantom cohorts with known answers."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer


class Kind(str, Enum):
    ct = "ct"
    fundus = "fundus"


def register(app: typer.Typer) -> None:
    @app.command("phantom")
    def phantom_cmd(
        kind: Kind = typer.Argument(..., help="ct (DICOM CT series) or fundus (PNG + DICOM photographs)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (case folders + labels.csv)."),
        n: int = typer.Option(20, "-n", help="Number of cases."),
        seed: int = typer.Option(0, "--seed", help="Cohort seed; case i uses SeedSequence([seed, i])."),
        shortcut: float = typer.Option(
            0.0,
            "--shortcut",
            help="Probability in [0, 1] that the shortcut marker follows the label (a biased split).",
        ),
        size: str = typer.Option("test", "--size", help="Phantom configuration: test (small) or benchmark."),
        compression: str = typer.Option("none", "--compression", help="CT transfer syntax: none, rle, jpeg-ls, jpeg2000."),
    ) -> None:
        """Generate a phantom cohort: images as a user's data arrives, ground-truth masks, labels.csv."""
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import Progress

        from pipelines.phantom import write_ct_cohort, write_fundus_cohort

        with Progress(transient=True) as bar:
            task = bar.add_task(f"{kind.value} phantoms", total=n)
            step = lambda k: bar.advance(task, k)  # noqa: E731
            if kind is Kind.ct:
                root = write_ct_cohort(out, n, seed, config=size, shortcut=shortcut, compression=compression, progress=step)
            else:
                root = write_fundus_cohort(out, n, seed, config=size, shortcut=shortcut, progress=step)
        Console(highlight=False).print(f"wrote {n} {kind.value} phantom case(s) and labels.csv to {escape(str(root))}")

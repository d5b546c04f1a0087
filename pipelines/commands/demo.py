"""``medxai demo``: the end-to-end demonstration on bundled data."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("demo_out"), "-o", "--out", help="Output folder."),
    ) -> None:
        """Run the demo on bundled data and print where the results are."""
        from rich.console import Console
        from rich.markup import escape

        from pipelines.demo import run_demo

        console = Console(highlight=False)
        result = run_demo(out)
        console.print(f"[bold]Input[/]: {escape(result['source'])}")
        for key, value in result["summary"].items():
            console.print(f"  {key}: {escape(str(value))}")
        console.print("[bold]Written[/]:")
        for key, value in result["written"].items():
            console.print(f"  {key}: {escape(value)}")

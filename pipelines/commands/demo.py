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

        from pipelines.commands._progress import progress_bars
        from pipelines.demo import run_demo

        console = Console(highlight=False, soft_wrap=True)  # paths printed whole, never broken
        with progress_bars() as progress:
            result = run_demo(out, progress=progress)
        console.print(f"[bold]Real CT read[/]: {escape(result['source'])}")
        for key, value in result["summary"].items():
            console.print(f"  {key}: {escape(str(value))}")
        ct, fu = result["results"]["ct"], result["results"]["fundus"]
        m = ct["models"]
        console.print("[bold]Checks against the planted truth[/]:")
        console.print(
            f"  CT teacher P(death within a year): query {m['teacher_p_query']:.3f}, "
            f"less likely {m['teacher_p_less_likely']:.3f}, more likely {m['teacher_p_more_likely']:.3f}"
        )
        console.print(
            f"  CT counterfactual change vs planted fibrosis: pixel AUROC {ct['diffexplainer']['loc_auroc']:.3f} (0.5 = chance)"
        )
        f = fu["models"]
        console.print(
            f"  fundus classifier P(healthy): query {f['classifier_p_healthy_query']:.3f}, "
            f"counterfactual {f['classifier_p_healthy_counterfactual']:.3f}; "
            f"change vs planted lesions: AUROC {fu['dvce']['loc_auroc']:.3f}"
        )
        console.print("[bold]Written[/]:")
        for key, value in result["written"].items():
            console.print(f"  {key}: {escape(value)}")

"""``medxai explain``: DICOM -> DiffExplainer counterfactuals and heatmaps on the CT grid."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="Config, e.g. configs/ct_prognosis.yaml."),
        source: Path = typer.Option(..., "--input", "-i", help="DICOM folder (each CT series is one case)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (one sub-folder per case)."),
        decode_steps: Optional[int] = typer.Option(None, "--decode-steps", help="Override explainer.decode_steps."),
        encode_steps: Optional[int] = typer.Option(None, "--encode-steps", help="Override explainer.encode_steps."),
    ) -> None:
        """Explain the configured black box on CT series with DiffExplainer counterfactuals."""
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from pipelines.explain_ct import explain_ct

        overrides = {}
        if decode_steps is not None:
            overrides["explainer.decode_steps"] = decode_steps
        if encode_steps is not None:
            overrides["explainer.encode_steps"] = encode_steps
        console = Console(highlight=False)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("loading", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            result = explain_ct(config, source, out, progress=progress, overrides=overrides)
        for case in result["cases"]:
            console.print(f"[bold]{escape(case['case'])}[/]: teacher scores {[round(v, 3) for v in case['query']]} -> class {case['prediction']}")
            for f in result["written"][case["case"]]:
                console.print(f"  wrote {escape(f)}")
        console.print(f"{result['n_cases']} case(s) in {result['seconds']:.1f} s")

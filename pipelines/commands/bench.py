"""``medxai bench``: every explainer against the phantoms' ground truth; results.json and report.html."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.commands._options import trust_code_option


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (results.json, report.html, figures/)."),
        quick: bool = typer.Option(False, "--quick", help="Tiny models and few cases: checks the whole path in minutes."),
        models: Path | None = typer.Option(
            None, "--models", help="Model cache: models found there are loaded, missing ones trained there (default OUT/models)."
        ),
        config: Path | None = typer.Option(None, "--config", "-c", help="Bench config (default configs/bench.yaml)."),
        only: str | None = typer.Option(
            None, "--only", help="Run one part: ct, fundus or cohort (the cohort report's scenarios)."
        ),
        pretrained: bool = typer.Option(
            False, "--pretrained", help="Start from the shipped phantom models instead of training the big ones (see README)."
        ),
        trust_code: bool = trust_code_option("model classes / evaluate MONAI bundle expressions in the CT and DR configs"),
    ) -> None:
        """Train (or load) the phantom models, run every explainer on held-out phantoms, write results and a report."""
        from rich.console import Console
        from rich.markup import escape

        from pipelines.bench import run_bench
        from pipelines.commands._progress import progress_bars

        with progress_bars() as progress:
            results = run_bench(
                out,
                quick=quick,
                models_dir=models,
                config=config,
                only=only,
                pretrained=pretrained,
                progress=progress,
                trust_code=trust_code,
            )
        console = Console(highlight=False)
        for part, block in results.items():  # every half the bench ran, every method it measured
            if part in ("config", "methods", "models") or not isinstance(block, dict):
                continue
            for method, row in block.items():
                if isinstance(row, dict) and "loc_auroc" in row:
                    auc = row["loc_auroc"]
                    console.print(f"{escape(part):6s} {escape(method):22s} loc AUROC {'-' if auc is None else f'{auc:.3f}'}")
        skipped = {name: row["skipped"] for name, row in results.get("methods", {}).items() if row.get("skipped")}
        for name, why in skipped.items():
            console.print(f"skipped {escape(name)}: {escape('; '.join(f'{k}: {v}' for k, v in why.items()))}")
        console.print(f"{results['seconds']:.0f} s; models trained: {escape(', '.join(results['models']['trained']) or 'none')}")
        console.print(f"wrote {escape(str(out / 'results.json'))}")
        console.print(f"wrote {escape(str(out / 'report.html'))}")

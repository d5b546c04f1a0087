"""``medxai cohort explain``: every case of a built cohort with one registered method (pipelines.cohort_explain)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.commands._groups import get_cohort_app
from pipelines.commands._options import trust_code_option


def register(app: typer.Typer) -> None:
    cohort = get_cohort_app(app)

    @cohort.command("explain")
    def explain_cmd(
        cohort_dir: Path = typer.Argument(..., help="A cohort folder written by medxai cohort build."),
        config: Path = typer.Option(..., "--config", "-c", help="Job config (input: ct_stack), e.g. configs/ct_prognosis.yaml."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder: cases/<id>/ per case, failed/, cases.csv."),
        method: str | None = typer.Option(None, "--method", "-m", help="Registered method (default: the config's method)."),
        split: str = typer.Option("test", "--split", help="Which split to explain: test, validation, train or all."),
        case: list[str] = typer.Option([], "--case", help="Explain this case id (repeatable) instead of a split."),
        shard: str | None = typer.Option(
            None,
            "--shard",
            help="i/n: this process takes every n-th case from the i-th (Slurm arrays, machines); torchrun ranks split further.",
        ),
        dicom: bool = typer.Option(
            False, "--dicom", help="Also write SC overlays, Parametric Map and derived series per case (reads each series again)."
        ),
        trust_code: bool = trust_code_option(),
    ) -> None:
        """Explain every case of a cohort; finished cases are skipped on a rerun, failures logged and skipped."""
        from rich.console import Console
        from rich.markup import escape

        from pipelines.cohort_explain import explain_cohort
        from pipelines.commands._progress import progress_bars

        console = Console(highlight=False, soft_wrap=True)
        with progress_bars(eta=True) as progress:
            res = explain_cohort(
                cohort_dir, config, out, method=method, split=split, ids=case or None, shard=shard, dicom=dicom,
                trust_code=trust_code, progress=progress,
            )  # fmt: skip
        console.print(
            f"shard {res.shard}: {len(res.explained)} case(s) explained with {escape(res.method)}, {len(res.skipped)} already "
            f"done, {len(res.failed)} failed, of {res.mine} in this shard ({res.selected} selected) in {res.seconds:.1f} s"
        )
        for cid in res.failed:
            console.print(f"  failed: {escape(cid)} (reason in {escape(str(out / 'cases.csv'))})")
        console.print(f"table: {escape(str(out / 'cases.csv'))}")

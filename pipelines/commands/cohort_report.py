"""``medxai cohort report``: the cohort view of an explained cohort (pipelines.cohort_report)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.commands._groups import get_cohort_app


def register(app: typer.Typer) -> None:
    cohort = get_cohort_app(app)

    @cohort.command("report")
    def report_cmd(
        explained: Path = typer.Argument(..., help="The -o folder of medxai cohort explain."),
        out: Path = typer.Option(..., "-o", "--out", help="Report folder: report.html, features.csv, regions.csv, ..."),
        alpha: float = typer.Option(0.05, "--alpha", help="FDR level (Benjamini-Hochberg) for 'significant'."),
        resamples: int = typer.Option(2000, "--resamples", help="Bootstrap resamples for the intervals."),
        seed: int = typer.Option(0, "--seed", help="Bootstrap seed (the report is reproducible to the digit)."),
        step: str = typer.Option(
            "flip",
            "--step",
            help="Which counterfactual of each sweep: flip (the smallest step at which the black box decides that side) "
            "or largest (the farthest step).",
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report folder."),
    ) -> None:
        """Population maps, lung zones and HU features the counterfactuals change across the cohort, with FDR,
        bootstrap intervals, outcome AUROC and shortcut flags, as one HTML page and CSV tables."""
        from rich.console import Console
        from rich.markup import escape

        from pipelines.cohort_report import write_cohort_report
        from pipelines.commands._progress import progress_bars

        if not 0.0 < alpha < 1.0:
            raise ValueError(f"--alpha must lie in (0, 1), got {alpha}.")
        if step not in ("flip", "largest"):
            raise ValueError(f"--step must be flip or largest, got {step!r}.")
        if resamples < 100:
            raise ValueError(f"--resamples must be at least 100 for a 95 % interval, got {resamples}.")
        console = Console(highlight=False, soft_wrap=True)
        with progress_bars(eta=True) as progress:
            res = write_cohort_report(
                explained,
                out,
                alpha=alpha,
                n_resamples=resamples,
                seed=seed,
                step_rule=step,
                overwrite=overwrite,
                progress=progress,
            )
        a = res.analysis
        console.print(f"{res.n_cases} case(s) analysed in {res.seconds:.1f} s; {len(res.left_out)} left out")
        for cid, why in res.left_out[:20]:
            console.print(f"  left out: {escape(cid)}: {escape(why)}")
        for direction, what in (("span", "toward minus away"), ("toward", "toward the target"), ("away", "away from it")):
            top = [r for r in a.features if r.direction == direction and r.q < alpha][:3]
            if top:
                items = ", ".join(f"{r.region}/{r.feature} {r.wants} (q {r.q:.2g})" for r in top)
                console.print(f"top features, {what}: {escape(items)}")
        if a.shortcut_candidates:
            console.print(f"[bold red]shortcut candidates[/]: {escape(', '.join(a.shortcut_candidates))}")
        console.print(f"report: {escape(str(out / 'report.html'))}")

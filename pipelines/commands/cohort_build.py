"""``medxai cohort build``: a folder of DICOM studies + an outcomes CSV -> a cohort folder (docs/cohort.md).

The job is `pipelines.cohort.build_cohort`; this module parses the options and prints the summary:
counts per status and split, then every case that was not built, with its reason (also in cases.csv).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from pipelines.commands._groups import get_cohort_app
from pipelines.commands._options import skip_unreadable_option

_LISTED = 20  # cases listed per status in the summary; cases.csv has them all


class Match(str, Enum):
    patient_id = "patient-id"
    study_uid = "study-uid"
    accession = "accession"
    folder = "folder"


def _summary(result: Any) -> list[str]:
    """The lines printed after a build (rich markup escaped by the caller)."""
    counts = result.counts()
    others = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "ok" and n)
    lines = [
        f"cohort {result.out}: {counts['ok']} case(s) in the store ({result.built} built now, {result.skipped} already there)"
        + (f"; {others}" if others else ""),
        "ok cases per split: " + (", ".join(f"{k} {v}" for k, v in sorted(result.splits().items())) or "none"),
        f"store: stacks.zarr image {list(result.store_shape)}; table: cases.csv",
    ]
    for status in ("failed", "excluded", "no_images", "no_row"):
        cases = [c for c in result.cases if c.status == status]
        for c in cases[:_LISTED]:
            where = f" (line {c.csv_line})" if c.csv_line else ""
            lines.append(f"  {status}: {c.id or '(no id)'}{where}: {c.reason}")
        if len(cases) > _LISTED:
            lines.append(f"  ... and {len(cases) - _LISTED} more {status} case(s): see cases.csv")
    lines += [f"warning: {w}" for w in result.warnings]
    return lines


def register(app: typer.Typer) -> None:
    cohort = get_cohort_app(app)

    @cohort.command("build")
    def build_cmd(
        studies: Path = typer.Option(..., "--studies", help="Folder of studies; each top-level folder is searched recursively."),
        labels: Path = typer.Option(..., "--labels", help="Outcomes CSV with a header (UTF-8; , ; or tab separated)."),
        out: Path = typer.Option(..., "-o", "--out", help="Cohort folder: new, empty, or an earlier build to complete."),
        id_column: str = typer.Option(..., "--id-column", help="CSV column matched against the images (see --match)."),
        label_column: str = typer.Option("label", "--label-column", help="CSV column with the binary outcome (0 or 1)."),
        match: Match = typer.Option(
            Match.patient_id,
            "--match",
            help="What the ID is compared with: PatientID, StudyInstanceUID, AccessionNumber, or the name of the "
            "top-level folder under --studies.",
        ),
        patient_column: str | None = typer.Option(
            None, "--patient-column", help="CSV column naming the patient when a patient has several rows (kept in one split)."
        ),
        config: Path = typer.Option(
            Path("configs/ct_prognosis.yaml"), "--config", "-c", help="Config whose stack section makes the stacks."
        ),
        modality: str = typer.Option("CT", "--modality", help="Required Modality of the series; 'any' accepts every modality."),
        min_slices: int = typer.Option(8, "--min-slices", help="Fewest slices a series must have."),
        thickness_range: tuple[float, float] | None = typer.Option(
            None, "--thickness-range", help="MIN MAX slice thickness in mm (inclusive); default: any."
        ),
        description: str | None = typer.Option(
            None,
            "--description",
            help="Regular expression searched (case-insensitive) in SeriesDescription. Of the series that pass the rule, "
            "the thinnest slices win, then the most slices.",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the stratified patient-level split."),
        split: tuple[float, float, float] = typer.Option(
            (0.7, 0.15, 0.15), "--split", help="TRAIN VALIDATION TEST fractions (sum 1)."
        ),
        workers: int = typer.Option(1, "--workers", "-j", help="Processes that read and transform the series."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild every case instead of completing the folder."),
        skip_unreadable: bool = skip_unreadable_option("the case's reason in cases.csv"),
    ) -> None:
        """Match DICOM studies to an outcomes CSV, write their CT stacks, splits and cases.csv (resumable; docs/cohort.md)."""
        from rich.console import Console
        from rich.markup import escape

        from pipelines.cohort import SelectionRule, build_cohort
        from pipelines.commands._progress import progress_bars

        rule = SelectionRule(
            modality=None if modality.strip().lower() in ("", "any") else modality.strip(),
            min_slices=min_slices,
            thickness_range=thickness_range,
            description=description,
        )
        with progress_bars(eta=True) as progress:
            result = build_cohort(
                studies,
                labels,
                out,
                id_column=id_column,
                label_column=label_column,
                match=match.value,
                patient_column=patient_column,
                rule=rule,
                config=config,
                seed=seed,
                split=split,
                workers=workers,
                skip_unreadable=skip_unreadable,
                overwrite=overwrite,
                progress=progress,
            )
        console = Console(highlight=False, soft_wrap=True)
        for line in _summary(result):
            console.print(escape(line))

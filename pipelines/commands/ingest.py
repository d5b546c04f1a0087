"""``medxai ingest``: read a DICOM series / file, NIfTI, NRRD or photograph and write a volume file."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.commands._options import skip_unreadable_option


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest_cmd(
        source: Path = typer.Argument(
            ..., help="DICOM folder (searched recursively), DICOM file, .nii.gz/.nrrd, or a fundus .jpg/.png."
        ),
        out: Path | None = typer.Option(
            None, "-o", "--out", help="Output .nii.gz or .nrrd (volumes; NIfTI in RAS, NRRD in LPS) or .png (photos)."
        ),
        series: str | None = typer.Option(None, "--series", help="SeriesInstanceUID when the folder has several."),
        allow_gaps: bool = typer.Option(
            False, "--allow-gaps", help="Accept missing slices: interpolate over the gap and warn loudly."
        ),
        skip_unreadable: bool = skip_unreadable_option("a warning kept with the output (printed, and in the NRRD/NIfTI header)"),
        padding_value: float | None = typer.Option(
            None,
            "--padding-value",
            metavar="HU",
            help="Value for PixelPaddingValue voxels (outside the scanned field). Default: -1000 (air) for CT, "
            "the lowest other value for other modalities.",
        ),
        no_compression: bool = typer.Option(
            False, "--no-compression", help="Write the volume uncompressed (.nrrd raw encoding; for NIfTI use .nii)."
        ),
    ) -> None:
        """Read an image, print a short summary, and write it with correct geometry."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        from pipelines.ingest import ingest, summarize

        obj, written = ingest(
            source,
            out,
            series_uid=series,
            allow_gaps=allow_gaps,
            skip_unreadable=skip_unreadable,
            padding_value=padding_value,
            compress=not no_compression,
        )
        summary = summarize(obj)
        table = Table(show_header=False, box=None, pad_edge=False)
        for key, value in summary.items():
            if key in ("warnings", "notes"):
                continue
            table.add_row(f"[bold]{key}[/]", escape(str(value)))
        for n in summary.get("notes", []):
            table.add_row("[bold]note[/]", escape(n))
        console = Console(highlight=False)
        console.print(table)
        for w in summary.get("warnings", []):
            Console(stderr=True, highlight=False).print(f"[bold yellow]WARNING:[/] {escape(w)}")
        if written is not None:
            console.print(f"wrote {escape(str(written))}")

"""``medxai export``: write a heatmap (and counterfactual) as DICOM SC + Parametric Map + SEG and a Slicer bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from pipelines.commands._options import skip_unreadable_option


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        source: Path = typer.Option(..., "--source", help="Source CT DICOM folder (the study the exports join)."),
        heatmap: Path = typer.Option(..., "--heatmap", help="Heatmap .nii.gz/.nrrd on the CT grid."),
        out: Path = typer.Option(
            ..., "-o", "--out", help="Output folder (OUT/<patient>/<study>/<series>_<method>/...); not inside --source."
        ),
        method: str = typer.Option("unknown", "--method", help="Explanation method, shown in the legend."),
        target: str = typer.Option("unknown", "--target", help="What was explained, shown in the legend."),
        score_before: float | None = typer.Option(
            None, "--score-before", help="Model probability of the target for the query, in [0, 1] (softmax/sigmoid output)."
        ),
        score_after: float | None = typer.Option(
            None, "--score-after", help="Model probability of the target for the counterfactual, in [0, 1]."
        ),
        counterfactual: Path | None = typer.Option(
            None, "--counterfactual", help="Counterfactual CT volume (.nii.gz/.nrrd, HU) on the CT grid."
        ),
        series: str | None = typer.Option(None, "--series", help="SeriesInstanceUID when the folder has several."),
        multiframe: bool = typer.Option(False, "--multiframe", help="One multi-frame SC object instead of one per slice."),
        slices: str = typer.Option("nonzero", "--slices", help="'all' or 'nonzero' (slices where the heatmap is non-zero)."),
        window: str = typer.Option("lung", "--window", help="CT window: lung, soft-tissue, mediastinum, bone."),
        colormap: str | None = typer.Option(
            None, "--colormap", help="matplotlib colour map of the heatmap (default: the overlay renderer's, see docs/export.md)."
        ),
        alpha: float = typer.Option(0.5, "--alpha", help="Maximum opacity of the heatmap in the SC overlays, 0..1."),
        threshold: float = typer.Option(
            0.05, "--threshold", help="Fraction (0..1) of the heatmap's maximum below which the overlays are not tinted."
        ),
        no_seg: bool = typer.Option(False, "--no-seg", help="Skip the binary Segmentation."),
        no_slicer: bool = typer.Option(False, "--no-slicer", help="Skip the 3D Slicer bundle."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an existing export of this series and method (once the new one is complete)."
        ),
        skip_unreadable: bool = skip_unreadable_option("export.json reader_warnings"),
    ) -> None:
        """Export a heatmap made elsewhere: SC overlays and a Parametric Map in the source study, and a 3D Slicer bundle.

        (``medxai explain`` writes the same objects for its own explanations in the same run.)"""
        from rich.console import Console
        from rich.markup import escape

        from dicom_io.export import check_render_options
        from pipelines.export import export_explanation

        if slices not in ("all", "nonzero"):
            raise ValueError(f"--slices must be 'all' or 'nonzero'; got {slices!r}.")
        try:
            check_render_options(alpha, threshold)
        except ValueError as e:  # the renderer's ranges, named as the user typed them
            raise ValueError(f"--alpha / --threshold: {e}") from None
        res = export_explanation(
            source,
            heatmap,
            out,
            method=method,
            target=target,
            score_before=score_before,
            score_after=score_after,
            counterfactual=counterfactual,
            series_uid=series,
            multiframe=multiframe,
            slices=slices,
            window=window,
            colormap=colormap,
            alpha=alpha,
            overlay_threshold=threshold,
            segmentation=not no_seg,
            slicer=not no_slicer,
            overwrite=overwrite,
            skip_unreadable=skip_unreadable,
        )
        c = Console(highlight=False)
        c.print(f"export folder: {escape(str(res.out_dir))}")
        c.print(f"overlay SC: {len(res.overlay_files)} file(s)  counterfactual SC: {len(res.counterfactual_files)} file(s)")
        for label, p in (
            ("parametric map", res.parametric_map),
            ("segmentation", res.segmentation),
            ("slicer bundle", res.slicer_bundle),
            ("summary", res.summary),
        ):
            if p is not None:
                c.print(f"{label}: {escape(str(p))}")

"""``medxai explain``: any registered method on a CT series / volume or a fundus photo (pipelines.explain).

The config's ``input`` picks the kind of input, its ``method`` the default method; ``--method`` runs any
other registered method that takes that input, ``--list-methods`` prints the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pipelines.commands._options import skip_unreadable_option, trust_code_option


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain_cmd(
        config: Path | None = typer.Option(None, "--config", "-c", help="Config, e.g. configs/ct_prognosis.yaml."),
        source: Path | None = typer.Option(
            None,
            "--input",
            "-i",
            help="DICOM folder (each CT series is one case), a CT DICOM file or .nii.gz/.nrrd volume, or a fundus "
            "photograph (.jpg/.png/DICOM), as the config's input says.",
        ),
        out: Path | None = typer.Option(
            None, "-o", "--out", help="Output folder (OUT/<patient>/<study>/<series>_<method>/ per case); not inside --input."
        ),
        method: str | None = typer.Option(
            None, "--method", "-m", help="Registered method to run (default: the config's method); see --list-methods."
        ),
        list_methods: bool = typer.Option(
            False, "--list-methods", help="Print every registered method (name, inputs, models it needs, summary) and exit."
        ),
        decode_steps: int | None = typer.Option(None, "--decode-steps", help="Override diffexplainer.decode_steps."),
        encode_steps: int | None = typer.Option(None, "--encode-steps", help="Override diffexplainer.encode_steps."),
        overwrite: bool = typer.Option(
            False,
            "--overwrite",
            help="Replace an existing explanation of the same case and method (once the new one is complete).",
        ),
        no_dicom: bool = typer.Option(
            False, "--no-dicom", help="Do not write the DICOM objects (SC, Parametric Map, SEG, derived series) for DICOM inputs."
        ),
        second_config: Path | None = typer.Option(
            None,
            "--second-config",
            help="A second job config whose black box is compared with this one's (--method digin-disagreement: "
            "images the first model puts in the target class and the second does not).",
        ),
        trust_code: bool = trust_code_option(),
        force: bool = typer.Option(
            False,
            "--force",
            help="Explain even when the input fails a check of what the models were trained for (modality, field of "
            "view, lung volume, ...); the failed checks are kept in the output's input_check.",
        ),
        skip_unreadable: bool = skip_unreadable_option("explanation.json provenance.reader_warnings"),
    ) -> None:
        """Explain the configured black box with any registered method; writes maps, counterfactuals and DICOM."""
        from rich.console import Console
        from rich.markup import escape

        console = Console(highlight=False, soft_wrap=True)  # paths printed whole, never broken
        if list_methods:
            _print_methods(console)
            return
        missing = [opt for opt, v in (("--config", config), ("--input", source), ("--out", out)) if v is None]
        if missing:
            raise ValueError(
                f"missing option(s) {', '.join(missing)}; e.g. medxai explain -c configs/ct_prognosis.yaml "
                "-i DICOM_DIR -o OUT (or medxai explain --list-methods)."
            )
        from pipelines.commands._progress import progress_bars
        from pipelines.explain import run_explain

        overrides: dict[str, Any] = {}
        if decode_steps is not None:
            overrides["diffexplainer.decode_steps"] = decode_steps
        if encode_steps is not None:
            overrides["diffexplainer.encode_steps"] = encode_steps
        with progress_bars() as progress:
            result = run_explain(
                config,
                source,
                out,
                method=method,
                overrides=overrides,
                trust_code=trust_code,  # type: ignore[arg-type]
                force=force,
                skip_unreadable=skip_unreadable,
                overwrite=overwrite,
                progress=progress,
                dicom=not no_dicom,
                second_config=second_config,
            )
        for case in result.cases:
            ids = " / ".join(escape(str(v)) for v in (case.patient_id, case.series_instance_uid) if v)
            console.print(f"[bold]{escape(case.case)}[/]" + (f" ({ids})" if ids else "") + f": {result.method}")
            probs = ", ".join(f"P(class {k}) {p:.3f}" for k, p in enumerate(case.probabilities))
            console.print(f"  black-box probabilities on the query: {probs} -> class {case.prediction}")
            tp = case.target_probability
            if "steps" in tp:
                steps = ", ".join(f"{s:+g}: {p:.3f}" for s, p in tp["steps"].items())
                origin = f"reconstruction {tp['origin']:.3f}; " if "origin" in tp else ""
                console.print(f"  P(class {case.target_class}) on the counterfactuals: {origin}{steps}")
            if "second_model" in tp:
                sm = tp["second_model"]
                steps = ", ".join(f"{s:+g}: {p:.3f}" for s, p in sm["steps"].items())
                console.print(
                    f"  second model, P(class {case.target_class}): query {sm.get('query', float('nan')):.3f}; "
                    f"reconstruction {sm.get('origin', float('nan')):.3f}; {steps}"
                )
            _print_check(console, {**case.input_check, "reasons": case.reasons, "notes": list(case.notes)})
            for f in case.files.values():
                console.print(f"  wrote {escape(str(f))}")
        console.print(f"{result.n_cases} case(s) explained with {result.method} in {result.seconds:.1f} s")


def _print_methods(console: Any) -> None:
    from rich.markup import escape

    from pipelines.explain import list_methods

    console.print("[bold]Registered methods[/] (medxai explain --method NAME):")
    for row in list_methods():
        needs = ", ".join(row["needs"]) or "-"
        optional = f" (optional: {', '.join(row['optional'])})" if row["optional"] else ""
        inputs = ", ".join(row["inputs"])
        console.print(f"  [bold]{escape(row['name'])}[/]  inputs: {inputs}; needs: {escape(needs)}{escape(optional)}")
        console.print(f"      {escape(row['summary'])}")


def _print_check(console: Any, check: dict[str, Any]) -> None:
    """The failed input checks of a forced run and the notes (e.g. already in the target class)."""
    from rich.markup import escape

    if check.get("forced"):
        console.print(f"  [bold yellow]input check FAILED, explained because of --force:[/] {escape(check.get('reasons', ''))}")
    for note in check.get("notes", []):
        console.print(f"  note: {escape(note)}")

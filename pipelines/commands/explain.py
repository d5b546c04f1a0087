"""``medxai explain``: the config's ``type`` picks the job: DiffExplainer on CT series (default,
``configs/ct_prognosis.yaml``) or DVCE on a fundus photograph (``type: dvce_fundus``,
``configs/dr_fundus.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from pipelines.commands._options import skip_unreadable_option, trust_code_option


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain_cmd(
        config: Path = typer.Option(..., "--config", "-c", help="Config, e.g. configs/ct_prognosis.yaml."),
        source: Path = typer.Option(
            ..., "--input", "-i", help="DICOM folder (each CT series is one case) or a fundus photograph (.jpg/.png/DICOM)."
        ),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder (one sub-folder per case)."),
        decode_steps: Optional[int] = typer.Option(None, "--decode-steps", help="Override explainer.decode_steps."),
        encode_steps: Optional[int] = typer.Option(None, "--encode-steps", help="Override explainer.encode_steps."),
        trust_code: bool = trust_code_option(),
        force: bool = typer.Option(
            False, "--force",
            help="Explain even when the input fails a check of what the models were trained for (modality, field of "
            "view, lung volume, ...); the failed checks are kept in the output's input_check.",
        ),
        skip_unreadable: bool = skip_unreadable_option("explanation.json reader_warnings"),
    ) -> None:
        """Explain the configured black box: DiffExplainer (CT) or DVCE (fundus), by the config's type."""
        from rich.console import Console
        from rich.markup import escape

        from pipelines.commands._progress import progress_bars
        from pipelines.explain_ct import explain_ct

        if _config_type(config) == "dvce_fundus":
            from pipelines.explain_dr import run_dr_explain

            res = run_dr_explain(config, source, out, dicom=True, trust_code=trust_code, force=force)
            console = Console(highlight=False)
            _print_check(console, res.input_check)
            console.print(f"scores {escape(str(res.scores))}; target class {res.target_class} "
                          f"{'reached' if res.target_reached else 'NOT reached'}")
            for f in res.files.values():
                console.print(f"  wrote {escape(str(f))}")
            return
        overrides = {}
        if decode_steps is not None:
            overrides["explainer.decode_steps"] = decode_steps
        if encode_steps is not None:
            overrides["explainer.encode_steps"] = encode_steps
        console = Console(highlight=False)
        with progress_bars() as progress:
            result = explain_ct(
                config, source, out, progress=progress, overrides=overrides, trust_code=trust_code,
                skip_unreadable=skip_unreadable, force=force,
            )
        for case in result["cases"]:
            console.print(f"[bold]{escape(case['case'])}[/]: teacher scores {[round(v, 3) for v in case['query']]} -> class {case['prediction']}")
            _print_check(console, {**case["input_check"], "reasons": case["forced_reasons"], "notes": case["notes"]})
            for f in result["written"][case["case"]]:
                console.print(f"  wrote {escape(f)}")
        console.print(f"{result['n_cases']} case(s) in {result['seconds']:.1f} s")


def _print_check(console: Any, check: dict[str, Any]) -> None:
    """The failed input checks of a forced run and the notes (e.g. already in the target class)."""
    from rich.markup import escape

    if check.get("forced"):
        console.print(f"  [bold yellow]input check FAILED, explained because of --force:[/] {escape(check.get('reasons', ''))}")
    for note in check.get("notes", []):
        console.print(f"  note: {escape(note)}")


def _config_type(path: Path) -> str:
    """The ``type`` field of a job config (``diffexplainer_ct`` when absent); the job validates the rest."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config '{path}' does not exist.") from e
    except yaml.YAMLError as e:
        raise ValueError(f"config '{path}' is not valid YAML: {e}") from e
    kind = str(data.get("type", "diffexplainer_ct")) if isinstance(data, dict) else "diffexplainer_ct"
    if kind not in _JOBS:
        raise ValueError(f"config '{path}': type '{kind}' is not one of {sorted(_JOBS)}; fix the 'type' field.")
    return kind


_JOBS = ("diffexplainer_ct", "dvce_fundus")

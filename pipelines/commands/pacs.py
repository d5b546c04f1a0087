"""``medxai pacs pull|push|store|echo``: DICOMweb (QIDO/WADO/STOW-RS) and DIMSE C-STORE transfers."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:11112); got {value!r}.")
    return host, int(port)


def register(app: typer.Typer) -> None:
    pacs = typer.Typer(help="Pull from and push to a PACS (DICOMweb, or DIMSE C-STORE).", no_args_is_help=True)
    app.add_typer(pacs, name="pacs")

    @pacs.command("pull")
    def pull_cmd(
        url: str = typer.Argument(..., help="DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web"),
        out: Path = typer.Option(..., "-o", "--out", help="Local folder (OUT/<study>/<series>/<sop>.dcm)."),
        study: Optional[str] = typer.Option(None, "--study", help="StudyInstanceUID."),
        series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID."),
        query: List[str] = typer.Option([], "--query", "-q", help="QIDO filter KEYWORD=VALUE (repeatable)."),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds per request."),
    ) -> None:
        """Search (QIDO-RS) and retrieve (WADO-RS) series into a local folder."""
        from dicom_io.pacs import pull

        filters = {}
        for q in query:
            k, sep, v = q.partition("=")
            if not sep or not k:
                raise ValueError(f"--query expects KEYWORD=VALUE; got {q!r}.")
            filters[k] = v
        path = pull(url, out, study_uid=study, series_uid=series, query=filters or None, timeout=timeout)
        typer.echo(f"pulled into {path}")

    @pacs.command("push")
    def push_cmd(
        url: str = typer.Argument(..., help="DICOMweb base URL."),
        files: List[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
        timeout: float = typer.Option(60.0, "--timeout", help="Seconds per request."),
    ) -> None:
        """Store files with STOW-RS."""
        from dicom_io.pacs import push

        stored = push(url, files, timeout=timeout)
        typer.echo(f"stored {len(stored)} instance(s) at {url}")

    @pacs.command("store")
    def store_cmd(
        address: str = typer.Argument(..., help="HOST:PORT of the DICOM (DIMSE) service."),
        files: List[Path] = typer.Argument(..., help="DICOM files or folders."),
        aet: str = typer.Option("ANY-SCP", "--aet", help="Called AE title (the PACS)."),
        calling_aet: str = typer.Option("MEDXAI", "--calling-aet", help="Our AE title."),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds per network step."),
    ) -> None:
        """Send files with C-STORE (PACS without DICOMweb)."""
        from dicom_io.pacs import c_store

        host, port = _host_port(address)
        stored = c_store(host, port, files, called_aet=aet, calling_aet=calling_aet, timeout=timeout)
        typer.echo(f"stored {len(stored)} instance(s) at {aet}@{host}:{port}")

    @pacs.command("echo")
    def echo_cmd(
        address: str = typer.Argument(..., help="HOST:PORT of the DICOM service."),
        aet: str = typer.Option("ANY-SCP", "--aet", help="Called AE title."),
        calling_aet: str = typer.Option("MEDXAI", "--calling-aet", help="Our AE title."),
        timeout: float = typer.Option(10.0, "--timeout", help="Seconds."),
    ) -> None:
        """C-ECHO (verification)."""
        from dicom_io.pacs import c_echo

        host, port = _host_port(address)
        c_echo(host, port, called_aet=aet, calling_aet=calling_aet, timeout=timeout)
        typer.echo("C-ECHO ok")

"""``medxai pacs pull|push|store|echo``: DICOMweb (QIDO/WADO/STOW-RS) and DIMSE C-STORE transfers.

Credentials: ``--auth-env VAR`` names an environment variable holding ``user:password`` (basic) or
``Bearer <token>`` / a bare token; without it, ``user:password@`` in the URL, else ``~/.netrc`` (or
``$NETRC``) for the host. TLS: ``--ca-bundle``, ``--client-cert`` and ``--client-key`` (PEM files) for
``https://`` URLs and, with ``--tls``, for DIMSE. Passwords and tokens never appear in any message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

__all__ = ["register"]

_AUTH_HELP = (
    "Name of an environment variable holding 'user:password' (basic auth) or 'Bearer <token>' / a bare "
    "token. Default: credentials in the URL, else ~/.netrc ($NETRC) for the host."
)
_CA_HELP = "PEM file of the CA(s) that signed the PACS certificate (default: the system's trusted CAs)."
_CERT_HELP = "PEM client certificate, for a PACS that asks for one (the key inside it, or --client-key)."
_KEY_HELP = "PEM private key of --client-cert (unencrypted)."


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:11112); got {value!r}.")
    return host, int(port)


def _http_options(
    auth_env: str | None, ca_bundle: Path | None, client_cert: Path | None, client_key: Path | None
) -> dict[str, Any]:
    from dicom_io.pacs import TlsFiles, auth_from_env

    tls = TlsFiles(ca_bundle, client_cert, client_key)
    return {"auth": auth_from_env(auth_env) if auth_env else None, "tls": None if tls.is_empty else tls}


def _dimse_tls(tls: bool, ca_bundle: Path | None, client_cert: Path | None, client_key: Path | None) -> Any:
    from dicom_io.pacs import TlsFiles

    files = TlsFiles(ca_bundle, client_cert, client_key)
    if not tls:
        if not files.is_empty:
            # the files would silently do nothing over plain TCP
            raise ValueError(
                "--ca-bundle / --client-cert / --client-key need --tls for DIMSE; add --tls (and the "
                "PACS's TLS port) or drop them."
            )
        return None
    return files


def register(app: typer.Typer) -> None:
    pacs = typer.Typer(help="Pull from and push to a PACS (DICOMweb, or DIMSE C-STORE).", no_args_is_help=True)
    app.add_typer(pacs, name="pacs")

    @pacs.command("pull")
    def pull_cmd(
        url: str = typer.Argument(..., help="DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web"),
        out: Path = typer.Option(..., "-o", "--out", help="Local folder (OUT/<study>/<series>/<sop>.dcm)."),
        study: str | None = typer.Option(None, "--study", help="StudyInstanceUID."),
        series: str | None = typer.Option(None, "--series", help="SeriesInstanceUID."),
        query: list[str] = typer.Option([], "--query", "-q", help="QIDO filter KEYWORD=VALUE (repeatable)."),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds per request."),
        auth_env: str | None = typer.Option(None, "--auth-env", metavar="VAR", help=_AUTH_HELP),
        ca_bundle: Path | None = typer.Option(None, "--ca-bundle", help=_CA_HELP),
        client_cert: Path | None = typer.Option(None, "--client-cert", help=_CERT_HELP),
        client_key: Path | None = typer.Option(None, "--client-key", help=_KEY_HELP),
    ) -> None:
        """Search (QIDO-RS) and retrieve (WADO-RS) series into a local folder."""
        from dicom_io.pacs import pull

        filters = {}
        for q in query:
            k, sep, v = q.partition("=")
            if not sep or not k:
                raise ValueError(f"--query expects KEYWORD=VALUE; got {q!r}.")
            filters[k] = v
        opts = _http_options(auth_env, ca_bundle, client_cert, client_key)
        path = pull(url, out, study_uid=study, series_uid=series, query=filters or None, timeout=timeout, **opts)
        typer.echo(f"pulled into {path}")

    @pacs.command("push")
    def push_cmd(
        url: str = typer.Argument(..., help="DICOMweb base URL."),
        files: list[Path] = typer.Argument(
            ..., help="DICOM files or folders (searched recursively; unfinished '.*.partial*' outputs are skipped)."
        ),
        timeout: float = typer.Option(60.0, "--timeout", help="Seconds per request."),
        auth_env: str | None = typer.Option(None, "--auth-env", metavar="VAR", help=_AUTH_HELP),
        ca_bundle: Path | None = typer.Option(None, "--ca-bundle", help=_CA_HELP),
        client_cert: Path | None = typer.Option(None, "--client-cert", help=_CERT_HELP),
        client_key: Path | None = typer.Option(None, "--client-key", help=_KEY_HELP),
    ) -> None:
        """Store files with STOW-RS."""
        from dicom_io.pacs import push, redact_url

        opts = _http_options(auth_env, ca_bundle, client_cert, client_key)
        stored = push(url, files, timeout=timeout, **opts)
        typer.echo(f"stored {len(stored)} instance(s) at {redact_url(url)}")

    @pacs.command("store")
    def store_cmd(
        address: str = typer.Argument(..., help="HOST:PORT of the DICOM (DIMSE) service."),
        files: list[Path] = typer.Argument(..., help="DICOM files or folders (unfinished '.*.partial*' outputs are skipped)."),
        aet: str = typer.Option("ANY-SCP", "--aet", help="Called AE title (the PACS)."),
        calling_aet: str = typer.Option("MEDXAI", "--calling-aet", help="Our AE title."),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds per network step."),
        tls: bool = typer.Option(False, "--tls", help="Associate over TLS (DICOM TLS port of the PACS)."),
        ca_bundle: Path | None = typer.Option(None, "--ca-bundle", help=_CA_HELP + " Needs --tls."),
        client_cert: Path | None = typer.Option(None, "--client-cert", help=_CERT_HELP + " Needs --tls."),
        client_key: Path | None = typer.Option(None, "--client-key", help=_KEY_HELP),
    ) -> None:
        """Send files with C-STORE (PACS without DICOMweb)."""
        from dicom_io.pacs import c_store

        host, port = _host_port(address)
        tls_files = _dimse_tls(tls, ca_bundle, client_cert, client_key)
        stored = c_store(host, port, files, called_aet=aet, calling_aet=calling_aet, timeout=timeout, tls=tls_files)
        typer.echo(f"stored {len(stored)} instance(s) at {aet}@{host}:{port}{' (TLS)' if tls else ''}")

    @pacs.command("echo")
    def echo_cmd(
        address: str = typer.Argument(..., help="HOST:PORT of the DICOM service."),
        aet: str = typer.Option("ANY-SCP", "--aet", help="Called AE title."),
        calling_aet: str = typer.Option("MEDXAI", "--calling-aet", help="Our AE title."),
        timeout: float = typer.Option(10.0, "--timeout", help="Seconds."),
        tls: bool = typer.Option(False, "--tls", help="Associate over TLS (DICOM TLS port of the PACS)."),
        ca_bundle: Path | None = typer.Option(None, "--ca-bundle", help=_CA_HELP + " Needs --tls."),
        client_cert: Path | None = typer.Option(None, "--client-cert", help=_CERT_HELP + " Needs --tls."),
        client_key: Path | None = typer.Option(None, "--client-key", help=_KEY_HELP),
    ) -> None:
        """C-ECHO (verification)."""
        from dicom_io.pacs import c_echo

        host, port = _host_port(address)
        tls_files = _dimse_tls(tls, ca_bundle, client_cert, client_key)
        c_echo(host, port, called_aet=aet, calling_aet=calling_aet, timeout=timeout, tls=tls_files)
        typer.echo(f"C-ECHO ok{' (TLS)' if tls else ''}")

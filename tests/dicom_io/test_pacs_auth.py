"""PACS credentials and TLS: auth from an environment variable, the URL or netrc; CA bundle and client
certificates for DICOMweb and DIMSE; passwords and tokens never in a message, log line or CLI error.

Everything runs on 127.0.0.1: a tiny ``http.server`` that records the Authorization header (optionally
behind TLS), and a pynetdicom SCP with an SSL context. Certificates are made per test module with the
``openssl`` command (a throw-away CA, a server certificate for IP 127.0.0.1, a client certificate).
"""

from __future__ import annotations

import base64
import http.server
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_io.pacs import (
    BearerAuth,
    PacsError,
    TlsFiles,
    auth_from_env,
    c_echo,
    pull,
    push,
    redact_text,
    redact_url,
    search_series,
)

PASSWORD = "s3cr3t-Pw:x"  # contains ':' on purpose (split at the first one)
TOKEN = "tok-9f8e7d6c5b4a"


# ---------------------------------------------------------------------------------------------- redaction
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042/dicom-web"),
        ("https://alice:pw@pacs.example/dicom-web", "https://alice:***@pacs.example/dicom-web"),
        ("https://alice:p%40ss@pacs:443/x?limit=5", "https://alice:***@pacs:443/x?limit=5"),
        ("https://TOKENONLY@pacs/dicom-web", "https://***@pacs/dicom-web"),
        ("https://pacs/x?access_token=abc&limit=5", "https://pacs/x?access_token=***&limit=5"),
        ("https://pacs/x?PatientID=7&token=abc", "https://pacs/x?PatientID=7&token=***"),
        ("https://pacs/x?key=abc;sig=def&api_key=ghi", "https://pacs/x?key=***;sig=***&api_key=***"),
        ("https://u:p@pacs/x?X-Amz-Signature=zz#frag", "https://u:***@pacs/x?X-Amz-Signature=***#frag"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_urls_paths_and_literals() -> None:
    text = (
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
        "/dicom-web/series?access_token=abc123&limit=2 (Caused by x); see http://bob:hunter22@h/p; "
        f"and {PASSWORD}"
    )
    out = redact_text(text, secrets=[PASSWORD])
    assert "abc123" not in out and "hunter22" not in out and PASSWORD not in out
    assert "access_token=***&limit=2" in out and "http://bob:***@h/p" in out and "port=9" in out


def test_reprs_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MX_AUTH", f"alice:{PASSWORD}")
    assert PASSWORD not in repr(auth_from_env("MX_AUTH"))
    assert TOKEN not in repr(BearerAuth(TOKEN))


# ---------------------------------------------------------------------------------------------- servers
class _Recorder(http.server.BaseHTTPRequestHandler):
    """QIDO answers ``[]`` (200) or ``status``; every Authorization header is recorded."""

    status = 200
    seen: list

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        body = b"[]" if self.status == 200 else b""
        self.send_response(self.status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *a: object) -> None:  # quiet
        pass


@pytest.fixture()
def server() -> Iterator:
    started = []

    def start(status: int = 200, ssl_context: ssl.SSLContext | None = None) -> tuple[str, list]:
        seen: list = []
        handler = type("H", (_Recorder,), {"status": status, "seen": seen})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        if ssl_context is not None:
            srv.socket = ssl_context.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        scheme = "https" if ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{srv.server_address[1]}/dicom-web", seen

    yield start
    for s in started:
        s.shutdown()
        s.server_close()


def _basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def _with_userinfo(url: str, user: str, pw: str) -> str:
    from urllib.parse import quote

    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{quote(pw, safe='')}@{rest}"


# ---------------------------------------------------------------------------------------------- credentials
@pytest.mark.parametrize(
    ("value", "header"),
    [
        (f"alice:{PASSWORD}", _basic("alice", PASSWORD)),
        (f"Bearer {TOKEN}", f"Bearer {TOKEN}"),
        (f"bearer   {TOKEN}", f"Bearer {TOKEN}"),
        (TOKEN, f"Bearer {TOKEN}"),
    ],
)
def test_auth_env_reaches_server(server, monkeypatch: pytest.MonkeyPatch, value: str, header: str) -> None:
    url, seen = server()
    monkeypatch.setenv("MX_PACS_AUTH", value)
    assert search_series(url, study_uid="1.2.3", auth=auth_from_env("MX_PACS_AUTH"), timeout=5) == []
    assert seen == [header]


def test_url_credentials_move_to_session_auth(server, caplog: pytest.LogCaptureFixture) -> None:
    url, seen = server()
    caplog.set_level(logging.DEBUG)  # dicomweb-client logs every request URL at DEBUG
    assert search_series(_with_userinfo(url, "alice", PASSWORD), study_uid="1.2.3", timeout=5) == []
    assert seen == [_basic("alice", PASSWORD)]
    assert caplog.records and not any("s3cr3t" in r.getMessage() for r in caplog.records)


def test_netrc_still_applies_without_explicit_auth(server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url, seen = server()
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login bob password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    search_series(url, study_uid="1.2.3", timeout=5)
    monkeypatch.setenv("MX_PACS_AUTH", f"Bearer {TOKEN}")
    search_series(url, study_uid="1.2.3", timeout=5, auth=auth_from_env("MX_PACS_AUTH"))  # explicit wins
    assert seen == [_basic("bob", PASSWORD), f"Bearer {TOKEN}"]


def test_auth_env_errors_name_the_variable_not_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MX_UNSET", raising=False)
    with pytest.raises(ValueError, match="MX_UNSET.*not set"):
        auth_from_env("MX_UNSET")
    monkeypatch.setenv("MX_BAD", f"two words {PASSWORD}")
    with pytest.raises(ValueError, match="MX_BAD") as e:
        auth_from_env("MX_BAD")
    assert PASSWORD not in str(e.value)
    with pytest.raises(ValueError, match="NAME of an environment variable") as e:
        auth_from_env(f"alice:{PASSWORD}")  # the secret pasted where the name belongs is not echoed
    assert PASSWORD not in str(e.value)
    monkeypatch.setenv("MX_AUTH", f"Bearer {TOKEN}")
    with pytest.raises(ValueError, match="credentials") as e:
        search_series("http://alice:pw1234@127.0.0.1:9/dicom-web", auth=auth_from_env("MX_AUTH"), timeout=1)
    assert "pw1234" not in str(e.value)


def test_refusing_server_never_shows_password(
    server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, seen = server(status=401)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PacsError, match="HTTP 401") as e:
        pull(_with_userinfo(url, "alice", PASSWORD), tmp_path / "o", study_uid="1.2.3", timeout=5)
    assert seen == [_basic("alice", PASSWORD)]
    chain, cur = [], e.value
    while cur is not None:
        chain.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    assert e.value.url == "http://alice:***@" + url.split("://")[1]
    assert not any("s3cr3t" in m for m in chain) and "alice:***@127.0.0.1" in str(e.value)
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)
    # connection refused: the requests error text (host, port, path) is part of the message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MX_AUTH", TOKEN)
    with pytest.raises(PacsError, match=f"127.0.0.1:{port}") as e:
        push(f"http://127.0.0.1:{port}/dicom-web?access_token={TOKEN}", [_one_dicom(tmp_path)], timeout=2)
    assert TOKEN not in str(e.value) and "access_token=***" in str(e.value)


def _one_dicom(tmp_path: Path) -> Path:
    import numpy as np

    from dicom_io import StudyInfo, Volume, write_ct_series

    vol = Volume(np.zeros((1, 4, 4), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    return write_ct_series(vol, tmp_path / "one", StudyInfo())[0]


def test_cli_error_never_shows_password_or_token(
    server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipelines.cli import main

    url, seen = server(status=401)
    code = main(["pacs", "pull", _with_userinfo(url, "alice", PASSWORD), "--study", "1.2", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "HTTP 401" in err and "alice:***@" in err and "s3cr3t" not in err
    monkeypatch.setenv("MX_PACS_AUTH", f"Bearer {TOKEN}")
    code = main(["pacs", "push", url, str(_one_dicom(tmp_path)), "--auth-env", "MX_PACS_AUTH"])
    err = capsys.readouterr().err
    assert code == 1 and "HTTP 401" in err and TOKEN not in err
    assert seen == [_basic("alice", PASSWORD), f"Bearer {TOKEN}"]
    # --auth-env with an unset variable: exit 2, naming the variable
    monkeypatch.delenv("MX_NOPE", raising=False)
    assert main(["pacs", "pull", url, "--study", "1.2", "-o", str(tmp_path / "o"), "--auth-env", "MX_NOPE"]) == 2
    assert "MX_NOPE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- TLS
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA, a server certificate for IP 127.0.0.1 and a client certificate, all PEM."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=medxai test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"{ext}\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        )
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=medxai test {name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    (d / "client-combined.pem").write_text((d / "client.pem").read_text() + (d / "client.key").read_text())
    return {p.stem: p for p in d.glob("*.pem")} | {"client.key": d / "client.key", "server.key": d / "server.key"}


def _server_context(pki: dict[str, Path], require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server"], pki["server.key"])
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki["ca"])
    return ctx


def test_tls_files_land_on_the_session(pki: dict[str, Path]) -> None:
    from dicom_io.pacs import _session

    s = _session(None, TlsFiles(pki["ca"], pki["client"], pki["client.key"]))
    assert s.verify == str(pki["ca"]) and s.cert == (str(pki["client"]), str(pki["client.key"]))
    assert s.auth is None and s.trust_env  # netrc stays in play
    s = _session(BearerAuth(TOKEN), TlsFiles(client_cert=pki["client-combined"]))
    assert s.verify is True and s.cert == str(pki["client-combined"]) and s.auth == BearerAuth(TOKEN)
    with pytest.raises(ValueError, match="client_key.*without client_cert"):
        TlsFiles(client_key=pki["client.key"])
    with pytest.raises(ValueError, match=r"ca_bundle \(--ca-bundle\).*not a file"):
        TlsFiles(ca_bundle=pki["ca"].parent / "missing.pem")
    with pytest.raises(ValueError, match="not https://"):
        search_series("http://127.0.0.1:9/dicom-web", tls=TlsFiles(pki["ca"]), timeout=1)


def test_https_with_ca_bundle_and_client_cert(server, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # a CA bundle from the environment that does not know the test CA: --ca-bundle must win over it
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["client"]))
    url, seen = server(ssl_context=_server_context(pki, require_client_cert=True))
    tls = TlsFiles(pki["ca"], pki["client"], pki["client.key"])
    assert search_series(url, study_uid="1.2", tls=tls, auth=BearerAuth(TOKEN), timeout=5) == []
    assert seen == [f"Bearer {TOKEN}"]
    with pytest.raises(PacsError, match="--ca-bundle"):  # REQUESTS_CA_BUNDLE does not know the test CA
        search_series(url, study_uid="1.2", timeout=5)
    with pytest.raises(PacsError, match="127.0.0.1"):  # the server wants a client certificate
        search_series(url, study_uid="1.2", tls=TlsFiles(pki["ca"]), timeout=5)
    assert len(seen) == 1


@pytest.fixture()
def tls_scp(pki: dict[str, Path]) -> Iterator:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    servers = []

    def start(require_client_cert: bool) -> int:
        ae = AE(ae_title="TLS-SCP")
        ae.add_supported_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        srv = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=_server_context(pki, require_client_cert))
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for s in servers:
        s.shutdown()


def test_dimse_c_echo_over_tls(tls_scp, pki: dict[str, Path]) -> None:
    port = tls_scp(require_client_cert=True)
    tls = TlsFiles(pki["ca"], pki["client"], pki["client.key"])
    assert c_echo("127.0.0.1", port, called_aet="TLS-SCP", timeout=5, tls=tls) == 0
    assert c_echo("127.0.0.1", port, called_aet="TLS-SCP", timeout=5, tls=TlsFiles(pki["ca"], pki["client-combined"])) == 0
    with pytest.raises(PacsError, match="dicoms://TLS-SCP@127.0.0.1.*TLS handshake"):
        c_echo("127.0.0.1", port, called_aet="TLS-SCP", timeout=5, tls=True)  # system CAs: unknown CA
    with pytest.raises(PacsError, match="TLS handshake"):
        c_echo("127.0.0.1", port, called_aet="TLS-SCP", timeout=5, tls=TlsFiles(pki["ca"]))  # no client cert


def test_cli_echo_tls_options(tls_scp, pki: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from pipelines.cli import main

    port = tls_scp(require_client_cert=False)
    addr = f"127.0.0.1:{port}"
    assert main(["pacs", "echo", addr, "--aet", "TLS-SCP", "--timeout", "5", "--tls", "--ca-bundle", str(pki["ca"])]) == 0
    assert "C-ECHO ok (TLS)" in capsys.readouterr().out
    assert main(["pacs", "echo", addr, "--aet", "TLS-SCP", "--ca-bundle", str(pki["ca"])]) == 2
    assert "need --tls" in capsys.readouterr().err

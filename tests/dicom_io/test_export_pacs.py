"""PACS client errors without a PACS: refusing, failing and silent servers give clear errors (fast)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dicom_io import StudyInfo, Volume, write_ct_series
from dicom_io.pacs import PacsError, c_echo, c_store, collect_dicom_files, pull, push


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ct_files(tmp_path: Path) -> list[Path]:
    vol = Volume(np.zeros((2, 8, 8), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    return write_ct_series(vol, tmp_path / "src", StudyInfo())


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 503

    def _reply(self) -> None:
        if self.status == 0:  # silent server
            time.sleep(3)
            return
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _reply

    def log_message(self, *a: object) -> None:  # quiet
        pass


@pytest.fixture()
def http_server():
    servers = []

    def start(status: int) -> str:
        handler = type("H", (_Handler,), {"status": status})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/dicom-web"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_push_refused_names_url_and_status(http_server, ct_files: list[Path]) -> None:
    url = http_server(503)
    before = [f.read_bytes() for f in ct_files]
    with pytest.raises(PacsError, match=r"127\.0\.0\.1.*HTTP 503") as e:
        push(url, ct_files, timeout=5)
    assert e.value.status == 503 and e.value.url == url
    assert [f.read_bytes() for f in ct_files] == before


def test_pull_forbidden_and_timeout(http_server, tmp_path: Path) -> None:
    with pytest.raises(PacsError, match="HTTP 403"):
        pull(http_server(403), tmp_path / "o", study_uid="1.2.3", timeout=5)
    url = http_server(0)
    t0 = time.monotonic()
    with pytest.raises(PacsError, match="timeout|did not answer"):
        pull(url, tmp_path / "o", study_uid="1.2.3", timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert not (tmp_path / "o").exists()


def test_pull_refuses_unbounded_query(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="study_uid, series_uid or a query"):
        pull("http://127.0.0.1:9/dicom-web", tmp_path)


def test_connection_refused(ct_files: list[Path]) -> None:
    port = _free_port()
    with pytest.raises(PacsError, match=f"127.0.0.1:{port}"):
        push(f"http://127.0.0.1:{port}/dicom-web", ct_files, timeout=2)
    with pytest.raises(PacsError, match=f"127.0.0.1:{port}"):
        c_store("127.0.0.1", port, ct_files, timeout=2)
    with pytest.raises(PacsError, match=f"127.0.0.1:{port}"):
        c_echo("127.0.0.1", port, timeout=2)


def test_collect_skips_partial_and_non_dicom(ct_files: list[Path]) -> None:
    folder = ct_files[0].parent
    (folder / "notes.txt").write_text("x")
    (folder / ".CT9.dcm.abc.partial.dcm").write_bytes(ct_files[0].read_bytes())
    assert collect_dicom_files([folder]) == sorted(ct_files)
    with pytest.raises(FileNotFoundError):
        collect_dicom_files([folder / "missing"])


def test_collect_skips_files_inside_partial_folders(ct_files: list[Path]) -> None:
    """A killed export leaves ``.name.XXXX.partial/`` folders; their files are never sent (issue 12, item 4)."""
    out = ct_files[0].parent
    stale = out / ".exports.p123hab12cdr0a1b2c.partial" / "overlays"  # a killed run's folder, nested
    stale.mkdir(parents=True)
    for f in ct_files:
        (stale / f.name).write_bytes(f.read_bytes())
    old = out / ".series.p9h0r1.partial-old"  # a folder that was being replaced
    old.mkdir()
    (old / "x.dcm").write_bytes(ct_files[0].read_bytes())
    hidden = out / ".hidden"  # hidden but not a partial: still sent (only partials are skipped)
    hidden.mkdir()
    (hidden / "h.dcm").write_bytes(ct_files[0].read_bytes())
    assert collect_dicom_files([out]) == sorted([*ct_files, hidden / "h.dcm"])
    # the folder given may itself sit below dot-folders; only components below it are judged
    assert collect_dicom_files([hidden]) == [hidden / "h.dcm"]
    # naming a partial directly is refused, not sent
    with pytest.raises(ValueError, match="unfinished temporary output"):
        collect_dicom_files([stale])
    with pytest.raises(ValueError, match="unfinished temporary output"):
        collect_dicom_files([stale / ct_files[0].name])

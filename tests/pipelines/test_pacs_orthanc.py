"""Integration with a real PACS: a throw-away Orthanc (+ DICOMweb plugin) on loopback.

Orthanc runs as an unprivileged user (``nobody`` via setpriv when the tests run as root) with a JSON
configuration in a temporary folder. Orthanc 1.10 binds every interface and has no bind-address option, so
the configuration closes it instead: random high ports, ``RemoteAccessAllowed: false`` (HTTP answers
loopback clients only), DICOM accepts only the AE ``MEDXAI`` from host 127.0.0.1 (``DicomAlwaysAllow*``
false, ``DicomCheckModalityHost`` true), no Lua, no REST file-system writes. It is stopped after the tests.
Install with ``scripts/install_orthanc.sh``; the tests skip (naming the reason) only when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io import StudyInfo, Volume, read_series, write_ct_series
from dicom_io.pacs import PacsError, c_echo, c_store, pull, push, search_series

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
CALLING_AET = "MEDXAI"
ORTHANC_AET = "MEDXAITEST"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dicomweb_plugin() -> str | None:
    for d in PLUGIN_DIRS:
        for name in ("libOrthancDicomWeb.so",):
            p = Path(d) / name
            if p.exists():
                return str(p)
        hits = sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []
        if hits:
            return str(hits[0])
    return None


@contextmanager
def _run_orthanc(**overrides: object) -> Iterator[dict]:
    """Start a loopback-only Orthanc (see the module docstring); ``overrides`` replace configuration keys."""
    exe = shutil.which("Orthanc")
    plugin = _dicomweb_plugin()
    if exe is None or plugin is None:
        pytest.skip(
            "Orthanc and its DICOMweb plugin are not installed (run scripts/install_orthanc.sh: "
            "apt-get install orthanc orthanc-dicomweb)"
        )
    http_port, dicom_port = _free_port(), _free_port()
    root = Path(tempfile.mkdtemp(prefix="medxai-orthanc-"))
    storage = root / "storage"
    storage.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing; Orthanc must not run as root")
        nobody = pwd.getpwnam("nobody")
        os.chown(storage, nobody.pw_uid, nobody.pw_gid)
        root.chmod(0o755)
        prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    config = {
        "Name": "medxai-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpTimeout": 10,
        "HttpThreadsCount": 4,
        "OrthancExplorerEnabled": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomScpTimeout": 10,
        "DicomModalities": {"medxai": {"AET": CALLING_AET, "Host": "127.0.0.1", "Port": _free_port()}},
        "ConcurrentJobs": 1,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": f"127.0.0.1:{http_port}", "Ssl": False},
        **overrides,
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config))
    cfg.chmod(0o644)
    log = open(root / "orthanc.log", "wb")
    proc = subprocess.Popen([*prefix, exe, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {proc.returncode}: {(root / 'orthanc.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/dicom-web/studies", timeout=1) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:
                if e.code == 401 and config["AuthenticationEnabled"]:
                    break  # up, and asking for credentials
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer within 20 s: {(root / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield {"url": f"{base}/dicom-web", "http": base, "dicom_port": dicom_port, "proc": proc, "config": config}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def orthanc() -> Iterator[dict]:
    with _run_orthanc() as server:
        yield server


def _blob(shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    h = np.exp(-(((x - 38) ** 2 + (y - 28) ** 2) / 60.0 + ((z - 3) ** 2) / 2.0))
    return np.where(h < 1e-3, 0.0, h).astype(np.float32)


def _sha(files: list[Path]) -> list[str]:
    return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]


def test_round_trip_push_pull_export_push(orthanc: dict, tmp_path: Path) -> None:
    from pipelines.export import export_explanation

    url = orthanc["url"]
    assert os.stat(f"/proc/{orthanc['proc'].pid}").st_uid != 0  # Orthanc is not running as root
    z, y, x = np.mgrid[0:8, 0:64, 0:64]
    hu = np.where((x - 32) ** 2 + (y - 32) ** 2 < 400, 30.0, -800.0).astype(np.float32)
    info = StudyInfo(patient_id="RT-1", patient_name="Round^Trip", series_description="CT round trip")
    src_files = write_ct_series(Volume(hu, (0.8, 0.8, 2.0), (-25.0, -25.0, 50.0)), tmp_path / "src", info)
    stored = push(url, src_files, timeout=20)
    assert len(stored) == 8
    study_uid = pydicom.dcmread(src_files[0], stop_before_pixels=True).StudyInstanceUID

    pulled = pull(url, tmp_path / "pulled", study_uid=study_uid, timeout=20)
    ct = read_series(pulled)
    assert ct.shape == (8, 64, 64)
    np.testing.assert_allclose(ct.array, hu)

    res = export_explanation(
        ct,
        _blob(ct.shape),
        tmp_path / "exports",
        method="GaussBlob",
        target="test",
        score_before=0.2,
        score_after=0.7,
        slices="nonzero",
        slicer=False,
    )
    exports = res.dicom_files()
    hashes = _sha(exports)
    uids = push(url, exports, timeout=20)
    assert len(uids) == len(exports)
    assert _sha(exports) == hashes  # pushing only reads

    series = search_series(url, study_uid=study_uid, timeout=20)
    assert len(series) == 1 + 1 + 2  # CT, SC overlays, PM, SEG, all in the source study
    assert {st for st, _ in series} == {study_uid}
    import dicomweb_client

    client = dicomweb_client.DICOMwebClient(url, timeout=20)
    modalities = sorted(s["00080060"]["Value"][0] for s in client.search_for_series(study_uid))
    assert modalities == ["CT", "OT", "OT", "SEG"]  # highdicom gives SC and Parametric Map modality OT


def test_c_store_and_echo(orthanc: dict, tmp_path: Path) -> None:
    port = orthanc["dicom_port"]
    vol = Volume(np.zeros((2, 16, 16), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    files = write_ct_series(vol, tmp_path / "s", StudyInfo(patient_id="CSTORE"))
    assert c_echo("127.0.0.1", port, called_aet=ORTHANC_AET, calling_aet=CALLING_AET, timeout=10) == 0
    assert len(c_store("127.0.0.1", port, files, called_aet=ORTHANC_AET, calling_aet=CALLING_AET, timeout=10)) == 2
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    assert len(search_series(orthanc["url"], study_uid=uid, timeout=10)) == 1
    # an AE the PACS does not know is refused, with host:port in the message
    with pytest.raises(PacsError, match=f"127.0.0.1:{port}"):
        c_store("127.0.0.1", port, files, called_aet=ORTHANC_AET, calling_aet="STRANGER", timeout=10)


def test_refusal_names_url_and_status(orthanc: dict, tmp_path: Path) -> None:
    bad = orthanc["http"] + "/no-such-dicomweb"
    with pytest.raises(PacsError, match=r"no-such-dicomweb.*HTTP 404"):
        pull(bad, tmp_path / "x", study_uid="1.2.3", timeout=10)
    with pytest.raises(PacsError, match="no series matching"):
        pull(orthanc["url"], tmp_path / "y", study_uid="1.2.3.4.5.6.7", timeout=10)


def test_cli_pacs_push_pull(orthanc: dict, tmp_path: Path) -> None:
    from pipelines.cli import main

    vol = Volume(np.zeros((2, 16, 16), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    files = write_ct_series(vol, tmp_path / "s", StudyInfo(patient_id="CLI"))
    assert main(["pacs", "push", orthanc["url"], str(tmp_path / "s")]) == 0
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert main(["pacs", "pull", orthanc["url"], "--series", uid, "-o", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").rglob("*.dcm"))) == 2
    assert main(["pacs", "pull", orthanc["http"] + "/nope", "--study", "1.2", "-o", str(tmp_path / "q")]) == 1


def test_orthanc_is_closed_to_other_hosts(orthanc: dict) -> None:
    """Orthanc 1.10 binds every interface; its configuration must refuse anything but loopback.

    Checked on the configuration the running server was started with, not by sending traffic to a
    non-loopback address (tests only ever talk to 127.0.0.1)."""
    cfg = orthanc["config"]
    assert cfg["RemoteAccessAllowed"] is False  # HTTP answers loopback clients only
    assert all(cfg[k] is False for k in cfg if k.startswith("DicomAlwaysAllow"))
    assert cfg["DicomCheckModalityHost"] is True
    assert [m["Host"] for m in cfg["DicomModalities"].values()] == ["127.0.0.1"]
    assert cfg["ExecuteLuaEnabled"] is False and cfg["RestApiWriteToFileSystemEnabled"] is False
    # and the process really is unprivileged
    uid = os.stat(f"/proc/{orthanc['proc'].pid}").st_uid
    assert os.geteuid() != 0 or uid != 0


def test_orthanc_with_authentication(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Basic auth from the URL, from --auth-env and from netrc against an Orthanc that demands it; a wrong or
    missing password gives HTTP 401 and the password is never printed."""
    from pipelines.cli import main

    password = "orthanc-S3cret"
    with _run_orthanc(AuthenticationEnabled=True, RegisteredUsers={"medxai": password}) as server:
        url = server["url"]
        vol = Volume(np.zeros((2, 16, 16), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        files = write_ct_series(vol, tmp_path / "s", StudyInfo(patient_id="AUTH"))
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # the user's own ~/.netrc stays out of it
        with pytest.raises(PacsError, match="HTTP 401"):
            push(url, files, timeout=10)
        with_pw = url.replace("http://", f"http://medxai:{password}@")
        assert len(push(with_pw, files, timeout=10)) == 2
        series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID

        monkeypatch.setenv("MX_ORTHANC_AUTH", f"medxai:{password}")
        assert (
            main(["pacs", "pull", url, "--series", series_uid, "-o", str(tmp_path / "p"), "--auth-env", "MX_ORTHANC_AUTH"]) == 0
        )
        assert len(list((tmp_path / "p").rglob("*.dcm"))) == 2

        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login medxai password {password}\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        assert len(search_series(url, series_uid=series_uid, timeout=10)) == 1
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))

        capsys.readouterr()
        monkeypatch.setenv("MX_ORTHANC_AUTH", "medxai:wrong-Passw0rd")
        assert (
            main(["pacs", "pull", url, "--series", series_uid, "-o", str(tmp_path / "q"), "--auth-env", "MX_ORTHANC_AUTH"]) == 1
        )
        assert main(["pacs", "push", url.replace("http://", "http://medxai:wrong-Passw0rd@"), str(files[0])]) == 1
        err = capsys.readouterr().err
        assert err.count("HTTP 401") == 2 and "wrong-Passw0rd" not in err and password not in err
        assert not (tmp_path / "q").exists()

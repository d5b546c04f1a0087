"""PACS transfer: DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store) with dicomweb-client, and
DIMSE C-STORE / C-ECHO with pynetdicom for PACS without DICOMweb.

Every call has a bounded timeout and no retries; a refusing, failing or silent PACS raises `PacsError`
naming the URL (or host:port) and the HTTP or DIMSE status. Local files are only read, never changed;
pulled files are written under temporary names and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pydicom
from pydicom.dataset import Dataset

from .atomic import atomic_path, safe_filename

__all__ = ["PacsError", "pull", "push", "search_series", "c_store", "c_echo", "collect_dicom_files"]

logger = logging.getLogger(__name__)


class PacsError(RuntimeError):
    """A PACS refused, failed or timed out. ``url`` names the server; ``status`` the HTTP/DIMSE status."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def _client(url: str, timeout: float) -> Any:
    from dicomweb_client.api import DICOMwebClient

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be a DICOMweb base URL starting with http:// or https://; got {url!r}.")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds; got {timeout}.")
    client = DICOMwebClient(url=url.rstrip("/"), timeout=timeout)
    client.set_http_retry_params(retry=False)
    return client


def _http_error(url: str, what: str, e: BaseException, timeout: float) -> PacsError:
    import requests

    if isinstance(e, requests.HTTPError) and e.response is not None:
        code = e.response.status_code
        reason = e.response.reason or ""
        return PacsError(f"PACS at {url} refused the {what}: HTTP {code} {reason}.".replace(" .", "."), url, code)
    if isinstance(e, requests.Timeout):
        return PacsError(f"PACS at {url} did not answer the {what} within {timeout:g} s (timeout).", url)
    if isinstance(e, requests.ConnectionError):
        return PacsError(f"Cannot connect to the PACS at {url} for the {what}: {e}. Is the URL right and the server up?", url)
    return PacsError(f"{what} at {url} failed: {type(e).__name__}: {e}.", url)


def _value(item: Mapping[str, Any], tag: str) -> str | None:
    v = item.get(tag, {}).get("Value")
    return str(v[0]) if v else None


def search_series(
    url: str, *, study_uid: str | None = None, series_uid: str | None = None,
    query: Mapping[str, str] | None = None, limit: int = 1000, timeout: float = 30.0,
) -> list[tuple[str, str]]:
    """QIDO-RS series search; returns (StudyInstanceUID, SeriesInstanceUID) pairs.

    ``query`` holds further QIDO filters by keyword (``{"PatientID": "123", "Modality": "CT"}``).
    """
    client = _client(url, timeout)
    filters: dict[str, Any] = dict(query or {})
    if series_uid:
        filters["SeriesInstanceUID"] = series_uid
    try:
        found = client.search_for_series(study_instance_uid=study_uid, search_filters=filters, limit=limit)
    except Exception as e:  # noqa: BLE001
        raise _http_error(url, "QIDO-RS series search", e, timeout) from e
    out = []
    for item in found:
        st, se = _value(item, "0020000D") or study_uid, _value(item, "0020000E")
        if st and se:
            out.append((st, se))
    return out


def pull(
    url: str,
    out_dir: str | os.PathLike[str],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    query: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    max_series: int = 100,
) -> Path:
    """Find series with QIDO-RS and retrieve them with WADO-RS into a local folder.

    Parameters
    ----------
    url : str
        DICOMweb base URL (e.g. ``http://127.0.0.1:8042/dicom-web``).
    out_dir : path
        Files go to ``out_dir/<study>/<series>/<sop>.dcm`` (names sanitised).
    study_uid, series_uid : str, optional
        What to pull; at least one of them or ``query``.
    query : mapping, optional
        Further QIDO filters by keyword.
    timeout : float
        Seconds per HTTP request (no retries).
    max_series : int
        Refuse queries that match more series than this.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if not (study_uid or series_uid or query):
        raise ValueError("pull needs study_uid, series_uid or a query; pulling a whole PACS is refused.")
    matches = search_series(url, study_uid=study_uid, series_uid=series_uid, query=query,
                            limit=max_series + 1, timeout=timeout)
    if not matches:
        raise PacsError(
            f"PACS at {url} has no series matching study={study_uid!r} series={series_uid!r} query={dict(query or {})}.",
            url, 404,
        )
    if len(matches) > max_series:
        raise ValueError(f"the query matches more than {max_series} series at {url}; narrow it or raise max_series.")
    client = _client(url, timeout)
    out = Path(out_dir)
    n = 0
    for st, se in matches:
        try:
            datasets = client.retrieve_series(st, se)
        except Exception as e:  # noqa: BLE001
            raise _http_error(url, f"WADO-RS retrieve of series {se}", e, timeout) from e
        folder = out / safe_filename(st) / safe_filename(se)
        for ds in datasets:
            _save_pulled(ds, folder / f"{safe_filename(ds.get('SOPInstanceUID', 'instance'))}.dcm")
            n += 1
    logger.info("pulled %d instance(s) of %d series from %s into %s", n, len(matches), url, out)
    return out


def _save_pulled(ds: Dataset, path: Path) -> None:
    ds.ensure_file_meta()
    if "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.uid import ExplicitVRLittleEndian

        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def collect_dicom_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files given directly plus DICOM files (``DICM`` preamble) found recursively in folders, sorted.

    Temporary ``.partial`` files are skipped.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and ".partial" not in f.name and _is_dicom(f):
                    out.append(f)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"'{p}' does not exist; give DICOM files or folders to send.")
    return out


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _read_all(files: Sequence[Path]) -> list[Dataset]:
    out = []
    for f in files:
        try:
            out.append(pydicom.dcmread(str(f)))
        except Exception as e:  # noqa: BLE001
            from .errors import UnreadableFileError

            raise UnreadableFileError(f"Cannot read DICOM file '{f}' to send: {type(e).__name__}: {e}.", str(f)) from e
    return out


def push(
    url: str, files: Iterable[str | os.PathLike[str]], *, timeout: float = 60.0, batch: int = 50
) -> list[str]:
    """Store files with STOW-RS.

    Parameters
    ----------
    url : str
        DICOMweb base URL.
    files : iterable of path
        Files or folders (searched recursively for DICOM files). They are only read.
    timeout : float
        Seconds per HTTP request (no retries).
    batch : int
        Instances per STOW-RS request.

    Returns
    -------
    list of str
        SOP Instance UIDs the PACS reported as stored.
    """
    paths = collect_dicom_files(files)
    if not paths:
        raise ValueError("no DICOM files to push; give files or folders that hold DICOM files.")
    client = _client(url, timeout)
    stored: list[str] = []
    for i in range(0, len(paths), max(1, batch)):
        datasets = _read_all(paths[i : i + batch])
        try:
            resp = client.store_instances(datasets)
        except Exception as e:  # noqa: BLE001
            raise _http_error(url, f"STOW-RS store of {len(datasets)} instance(s)", e, timeout) from e
        failed = resp.get("FailedSOPSequence") if resp is not None else None
        if failed:
            reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
            raise PacsError(
                f"PACS at {url} refused {len(failed)} of {len(datasets)} instance(s) (failure reason {', '.join(reasons)}).",
                url, int(failed[0].get("FailureReason", 0)) or None,
            )
        for item in (resp.get("ReferencedSOPSequence") or []) if resp is not None else []:
            stored.append(str(item.ReferencedSOPInstanceUID))
    logger.info("pushed %d instance(s) to %s", len(stored), url)
    return stored


def _association(host: str, port: int, called_aet: str, calling_aet: str, timeout: float, contexts: Sequence[tuple[str, Sequence[str]]]) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    where = f"dicom://{called_aet}@{host}:{port}"
    assoc = ae.associate(host, int(port), ae_title=called_aet)
    if not assoc.is_established:
        if assoc.is_rejected:
            why = "rejected the association (check the AE titles and that the PACS knows this AE)"
        elif assoc.is_aborted:
            why = "aborted the association"
        else:
            why = f"did not accept an association within {timeout:g} s (refused or unreachable)"
        raise PacsError(f"PACS at {where} {why}; calling AE {calling_aet!r}.", where)
    return assoc


def c_echo(host: str, port: int, *, called_aet: str = "ANY-SCP", calling_aet: str = "MEDXAI", timeout: float = 10.0) -> int:
    """DICOM verification (C-ECHO); returns the DIMSE status (0 = success) or raises PacsError."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    verification = "1.2.840.10008.1.1"
    assoc = _association(host, port, called_aet, calling_aet, timeout,
                         [(verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])])
    where = f"dicom://{called_aet}@{host}:{port}"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise PacsError(f"PACS at {where} sent no C-ECHO response within {timeout:g} s.", where)
    code = int(status.Status)
    if code != 0:
        raise PacsError(f"PACS at {where} answered C-ECHO with DIMSE status 0x{code:04X}.", where, code)
    return code


def c_store(
    host: str,
    port: int,
    files: Iterable[str | os.PathLike[str]],
    *,
    called_aet: str = "ANY-SCP",
    calling_aet: str = "MEDXAI",
    timeout: float = 30.0,
) -> list[str]:
    """Send files with DIMSE C-STORE (for PACS without DICOMweb).

    Returns the SOP Instance UIDs stored; raises PacsError naming host:port and the DIMSE status of the
    first refused instance (warnings 0xB000-0xB007 count as stored).
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    paths = collect_dicom_files(files)
    if not paths:
        raise ValueError("no DICOM files to send; give files or folders that hold DICOM files.")
    datasets = _read_all(paths)
    contexts: dict[str, set[str]] = {}
    for ds in datasets:
        ts = str(ds.file_meta.TransferSyntaxUID)
        contexts.setdefault(str(ds.SOPClassUID), {ExplicitVRLittleEndian, ImplicitVRLittleEndian}).add(ts)
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} SOP classes in one association; send fewer kinds of objects at once.")
    where = f"dicom://{called_aet}@{host}:{port}"
    assoc = _association(host, port, called_aet, calling_aet, timeout, [(k, sorted(v)) for k, v in contexts.items()])
    stored: list[str] = []
    try:
        for path, ds in zip(paths, datasets):
            status = assoc.send_c_store(ds)
            if not status or "Status" not in status:
                raise PacsError(f"PACS at {where} sent no C-STORE response for '{path}' within {timeout:g} s.", where)
            code = int(status.Status)
            if code != 0 and not 0xB000 <= code <= 0xB007:
                raise PacsError(f"PACS at {where} refused '{path}' with DIMSE status 0x{code:04X}.", where, code)
            stored.append(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()
    logger.info("C-STORE sent %d instance(s) to %s", len(stored), where)
    return stored

"""PACS transfer: DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store) with dicomweb-client, and
DIMSE C-STORE / C-ECHO with pynetdicom for PACS without DICOMweb.

Every call has a bounded timeout and no retries; a refusing, failing or silent PACS raises `PacsError`
naming the URL (or host:port) and the HTTP or DIMSE status. Local files are only read, never changed;
pulled files are written under temporary names and renamed when complete.

Credentials and TLS
-------------------
DICOMweb calls take ``auth`` (a ``requests`` auth object, e.g. from `auth_from_env`) and ``tls``
(`TlsFiles`: CA bundle, client certificate and key); they go on the ``requests.Session`` handed to
``DICOMwebClient``. Credentials written into the URL (``https://user:pw@host/...``) still work: they are
moved into the session's basic auth and stripped from the URL before anything sees it. Without explicit
credentials ``requests`` keeps using ``~/.netrc`` (or the file named by ``NETRC``) for the host. DIMSE
calls take ``tls`` (``True`` for the system CAs, or `TlsFiles`) and then associate over TLS.

Every message, log line and `PacsError` passes URLs through `redact_url`, so passwords and tokens never
appear in logs or CLI errors.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pydicom
import requests
from pydicom.dataset import Dataset

from atomicfs import atomic_path, is_partial

from .naming import safe_filename

__all__ = [
    "PacsError",
    "BearerAuth",
    "TlsFiles",
    "auth_from_env",
    "redact_url",
    "redact_text",
    "pull",
    "push",
    "search_series",
    "c_store",
    "c_echo",
    "collect_dicom_files",
]

logger = logging.getLogger(__name__)

HttpAuth = requests.auth.AuthBase | None

# Query parameters whose value is a secret (matched as a substring of the name, case-insensitive).
_SECRET_PARAM = re.compile(r"token|key|secret|passw|pwd|signature|sig$|auth|credential|session", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PARAM_IN_TEXT = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s'\"?]+)=(?P<value>[^&;#\s'\"]*)")
_MASK = "***"


class PacsError(RuntimeError):
    """A PACS refused, failed or timed out. ``url`` names the server (redacted); ``status`` the HTTP/DIMSE status."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def _redact_query(query: str) -> str:
    parts = []
    for part in re.split(r"([&;])", query):
        name, sep, _value = part.partition("=")
        if sep and _SECRET_PARAM.search(unquote(name)):
            part = f"{name}={_MASK}"
        parts.append(part)
    return "".join(parts)


def redact_url(url: str) -> str:
    """``url`` safe to show: the userinfo password and secret query values become ``***``.

    ``https://alice:s3cret@pacs/dicom-web?access_token=abc&limit=5`` becomes
    ``https://alice:***@pacs/dicom-web?access_token=***&limit=5``. Query parameters whose name contains
    ``token``, ``key``, ``secret``, ``passw``, ``pwd``, ``auth``, ``credential``, ``session`` or
    ``signature`` are masked. Anything that does not parse as a URL is returned with those query values
    masked.

    Parameters
    ----------
    url : str
        Any URL (or text that looks like one).

    Returns
    -------
    str
        The URL with secrets replaced by ``***``; the rest unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _PARAM_IN_TEXT.sub(_mask_param, url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _pw = userinfo.partition(":")
        # a user without ':' may still be a token (https://TOKEN@host), so mask it too
        netloc = f"{user}:{_MASK}@{hostport}" if sep else f"{_MASK}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query), parts.fragment))


def _mask_param(m: re.Match[str]) -> str:
    if _SECRET_PARAM.search(unquote(m.group("name"))):
        return f"{m.group('lead')}{m.group('name')}={_MASK}"
    return m.group(0)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL passed through `redact_url`, secret ``name=value`` query parameters
    masked (also in bare paths such as ``/studies?access_token=...``) and each string of ``secrets``
    replaced by ``***``.

    Parameters
    ----------
    text : str
        A message, e.g. the text of an exception raised by ``requests``.
    secrets : iterable of str
        Literal values that must never be shown (passwords, tokens); empty strings are ignored.

    Returns
    -------
    str
    """
    out = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    out = _PARAM_IN_TEXT.sub(_mask_param, out)
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        out = out.replace(s, _MASK)
    return out


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` on every request; the token is never shown by ``repr``."""

    def __init__(self, token: str) -> None:
        if not token or any(c.isspace() for c in token):
            raise ValueError("a bearer token must be one non-empty word without spaces.")
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BearerAuth) and other.token == self.token

    def __repr__(self) -> str:
        return f"BearerAuth(token='{_MASK}')"


class _BasicAuth(requests.auth.HTTPBasicAuth):
    """HTTP basic auth whose ``repr`` hides the password."""

    def __repr__(self) -> str:
        return f"HTTPBasicAuth(username={self.username!r}, password='{_MASK}')"


def auth_from_env(var: str) -> requests.auth.AuthBase:
    """HTTP credentials from the environment variable ``var`` (its value is never logged or shown).

    The value may be

    - ``user:password``: HTTP basic auth (split at the first ``:``; the password may contain ``:``);
    - ``Bearer <token>``: a bearer token (``Authorization: Bearer <token>``);
    - a bare token (one word without ``:``): the same as ``Bearer <token>``. Give tokens that contain
      ``:`` as ``Bearer <token>``.

    Parameters
    ----------
    var : str
        Name of the environment variable, e.g. ``MEDXAI_PACS_AUTH``.

    Returns
    -------
    requests.auth.AuthBase
        A `BearerAuth` or a basic-auth object.

    Raises
    ------
    ValueError
        The variable is not set, empty, or not one of the forms above (the message names the variable,
        never its value).
    """
    if not var or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
        # not echoed: people paste the secret itself here by mistake
        raise ValueError(
            "--auth-env expects the NAME of an environment variable (letters, digits, '_'; e.g. "
            "MEDXAI_PACS_AUTH), not the credentials themselves; got something else (not shown)."
        )
    value = os.environ.get(var, "").strip()
    if not value:
        raise ValueError(
            f"environment variable {var} (named by --auth-env) is not set or empty; set it to 'user:password' "
            "for basic auth or 'Bearer <token>' for a token, e.g. `export "
            f"{var}='Bearer ...'`."
        )
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        token = rest.strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError(
                f"environment variable {var} starts with 'Bearer' but holds no single token after it; set it to 'Bearer <token>'."
            )
        return BearerAuth(token)
    if any(c.isspace() for c in value):
        raise ValueError(
            f"environment variable {var} holds spaces but is neither 'user:password' nor "
            "'Bearer <token>'; set it to one of those forms."
        )
    user, sep, password = value.partition(":")
    if sep:
        if not user:
            raise ValueError(
                f"environment variable {var} holds ':password' without a user name; set it to "
                "'user:password' (or 'Bearer <token>' for a token)."
            )
        return _BasicAuth(user, password)
    return BearerAuth(value)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS: the CA bundle that signed the server's certificate and an optional client
    certificate (with its key, unless the key is inside the certificate file).

    ``ca_bundle=None`` uses the system's (or ``requests``' certifi) trusted CAs.

    Raises
    ------
    ValueError
        A file that does not exist, or a key without a certificate.
    """

    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def __post_init__(self) -> None:
        for name, option in (("ca_bundle", "--ca-bundle"), ("client_cert", "--client-cert"), ("client_key", "--client-key")):
            value = getattr(self, name)
            if value is None:
                continue
            path = Path(os.path.expanduser(str(value)))
            if not path.is_file():
                raise ValueError(f"{name} ({option}) '{path}' is not a file; give the path of a PEM file.")
            object.__setattr__(self, name, path)
        if self.client_key is not None and self.client_cert is None:
            raise ValueError(
                "client_key (--client-key) was given without client_cert (--client-cert); give the client certificate too."
            )

    @property
    def is_empty(self) -> bool:
        """True when no file is set (system CAs, no client certificate)."""
        return self.ca_bundle is None and self.client_cert is None

    def ssl_context(self) -> ssl.SSLContext:
        """A client ``SSLContext`` that verifies the server (hostname included) against ``ca_bundle`` (or the
        system CAs) and presents the client certificate, if any."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_bundle) if self.ca_bundle else None)
        if self.client_cert is not None:
            try:
                ctx.load_cert_chain(str(self.client_cert), str(self.client_key) if self.client_key else None)
            except (ssl.SSLError, OSError) as e:
                raise ValueError(
                    f"cannot load the client certificate '{self.client_cert}' (--client-cert)"
                    + (f" with key '{self.client_key}' (--client-key)" if self.client_key else "")
                    + f": {e}. Give PEM files, the key unencrypted or inside the certificate file."
                ) from e
        return ctx


def _split_credentials(url: str, auth: HttpAuth) -> tuple[str, HttpAuth]:
    """Move ``user:password@`` out of ``url`` into basic auth; refuse credentials given twice."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, auth
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if auth is not None:
        raise ValueError(
            f"the URL {redact_url(url)} holds credentials and --auth-env / auth was given too; give them once "
            "(prefer --auth-env and a URL without user:password@)."
        )
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, _BasicAuth(unquote(user), unquote(password))


def _secrets(auth: HttpAuth) -> list[str]:
    if isinstance(auth, BearerAuth):
        return [auth.token]
    if isinstance(auth, requests.auth.HTTPBasicAuth):
        return [str(auth.password)] if len(str(auth.password)) >= 3 else []  # too short to mask safely
    return []


@dataclass
class _Conn:
    """A dicomweb-client plus what error messages need: the redacted URL and the secrets to mask."""

    client: Any
    shown: str
    secrets: list[str]


class _PacsSession(requests.Session):
    """A session whose own ``verify`` (``--ca-bundle``) beats ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``.

    Plain requests lets those variables override ``session.verify`` (psf/requests#3829), which would
    silently ignore ``--ca-bundle``; everything else from the environment (netrc, proxies, the variables
    when no bundle is given) still applies.
    """

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        if verify is None and self.verify is not True:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


def _session(auth: HttpAuth, tls: TlsFiles | None) -> requests.Session:
    """The ``requests.Session`` for dicomweb-client: ``auth`` as session auth, the TLS files as
    ``verify`` / ``cert``."""
    from dicomweb_client.session_utils import add_certs_to_session

    session = _PacsSession()
    # Without explicit auth the session keeps trust_env and no auth, so requests still applies ~/.netrc / $NETRC.
    session.auth = auth
    if tls is not None:
        add_certs_to_session(
            session,
            ca_bundle=str(tls.ca_bundle) if tls.ca_bundle else None,
            cert=str(tls.client_cert) if tls.client_cert and not tls.client_key else None,
        )
        if tls.client_key is not None:  # add_certs_to_session takes one combined PEM only
            session.cert = (str(tls.client_cert), str(tls.client_key))
    return session


def _client(url: str, timeout: float, auth: HttpAuth = None, tls: TlsFiles | None = None) -> _Conn:
    from dicomweb_client import DICOMwebClient

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be a DICOMweb base URL starting with http:// or https://; got {redact_url(url)!r}.")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds; got {timeout}.")
    clean, auth = _split_credentials(url, auth)
    if tls is not None and not tls.is_empty and not clean.startswith("https://"):
        raise ValueError(
            f"--ca-bundle / --client-cert were given for {redact_url(clean)}, which is not https://; "
            "use the https:// URL of the PACS (the files would be ignored over plain HTTP)."
        )
    client = DICOMwebClient(url=clean.rstrip("/"), session=_session(auth, tls), timeout=timeout)
    client.set_http_retry_params(retry=False)
    return _Conn(client, redact_url(url.rstrip("/")), _secrets(auth))  # shows user:***@ if given


def _scrub(e: BaseException | None, secrets: Sequence[str]) -> None:
    """Redact the messages of ``e`` and its causes in place: the CLI and ``--debug`` tracebacks print them."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        try:
            e.args = tuple(redact_text(str(a), secrets) if not isinstance(a, (int, float)) else a for a in e.args)
        except Exception:  # noqa: BLE001 - best effort; the PacsError text itself is already redacted
            pass
        e = e.__cause__ or e.__context__


def _http_error(conn: _Conn, what: str, e: BaseException, timeout: float) -> PacsError:
    url = conn.shown
    _scrub(e, conn.secrets)
    if isinstance(e, requests.HTTPError) and e.response is not None:
        code = e.response.status_code
        reason = e.response.reason or ""
        hint = ""
        if code in (401, 403):
            hint = " Check the credentials (--auth-env, the URL's user:password@, ~/.netrc) and this user's rights."
        msg = f"PACS at {url} refused the {what}: HTTP {code} {reason}.".replace(" .", ".")
        return PacsError(msg + hint, url, code)
    if isinstance(e, requests.exceptions.SSLError):
        return PacsError(
            f"TLS with the PACS at {url} failed for the {what}: {redact_text(str(e), conn.secrets)}. If the PACS uses "
            "a private CA, give its PEM file with --ca-bundle; if it wants a client certificate, --client-cert "
            "(and --client-key).",
            url,
        )
    if isinstance(e, requests.Timeout):
        return PacsError(f"PACS at {url} did not answer the {what} within {timeout:g} s (timeout).", url)
    if isinstance(e, requests.ConnectionError):
        return PacsError(
            f"Cannot connect to the PACS at {url} for the {what}: {redact_text(str(e), conn.secrets)}. "
            "Is the URL right and the server up?",
            url,
        )
    return PacsError(f"{what} at {url} failed: {type(e).__name__}: {redact_text(str(e), conn.secrets)}.", url)


def _value(item: Mapping[str, Any], tag: str) -> str | None:
    v = item.get(tag, {}).get("Value")
    return str(v[0]) if v else None


def search_series(
    url: str,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    query: Mapping[str, str] | None = None,
    limit: int = 1000,
    timeout: float = 30.0,
    auth: HttpAuth = None,
    tls: TlsFiles | None = None,
) -> list[tuple[str, str]]:
    """QIDO-RS series search; returns (StudyInstanceUID, SeriesInstanceUID) pairs.

    ``query`` holds further QIDO filters by keyword (``{"PatientID": "123", "Modality": "CT"}``);
    ``auth`` and ``tls`` as for `pull`.
    """
    return _search(_client(url, timeout, auth, tls), study_uid, series_uid, query, limit, timeout)


def _search(
    conn: _Conn, study_uid: str | None, series_uid: str | None, query: Mapping[str, str] | None, limit: int, timeout: float
) -> list[tuple[str, str]]:
    filters: dict[str, Any] = dict(query or {})
    if series_uid:
        filters["SeriesInstanceUID"] = series_uid
    try:
        found = conn.client.search_for_series(study_instance_uid=study_uid, search_filters=filters, limit=limit)
    except Exception as e:
        raise _http_error(conn, "QIDO-RS series search", e, timeout) from e
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
    auth: HttpAuth = None,
    tls: TlsFiles | None = None,
) -> Path:
    """Find series with QIDO-RS and retrieve them with WADO-RS into a local folder.

    Parameters
    ----------
    url : str
        DICOMweb base URL (e.g. ``http://127.0.0.1:8042/dicom-web``). ``user:password@`` in it is moved
        into basic auth and never shown.
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
    auth : requests.auth.AuthBase, optional
        Credentials, e.g. ``auth_from_env("MEDXAI_PACS_AUTH")``. None: those in the URL, else ``~/.netrc``
        (or ``$NETRC``) for the host, else none.
    tls : TlsFiles, optional
        CA bundle and client certificate for an ``https://`` URL.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if not (study_uid or series_uid or query):
        raise ValueError("pull needs study_uid, series_uid or a query; pulling a whole PACS is refused.")
    conn = _client(url, timeout, auth, tls)
    matches = _search(conn, study_uid, series_uid, query, max_series + 1, timeout)
    if not matches:
        raise PacsError(
            f"PACS at {conn.shown} has no series matching study={study_uid!r} series={series_uid!r} query={dict(query or {})}.",
            conn.shown,
            404,
        )
    if len(matches) > max_series:
        raise ValueError(f"the query matches more than {max_series} series at {conn.shown}; narrow it or raise max_series.")
    out = Path(out_dir)
    n = 0
    for st, se in matches:
        try:
            datasets = conn.client.retrieve_series(st, se)
        except Exception as e:
            raise _http_error(conn, f"WADO-RS retrieve of series {se}", e, timeout) from e
        folder = out / safe_filename(st) / safe_filename(se)
        for ds in datasets:
            _save_pulled(ds, folder / f"{safe_filename(ds.get('SOPInstanceUID', 'instance'))}.dcm")
            n += 1
    logger.info("pulled %d instance(s) of %d series from %s into %s", n, len(matches), conn.shown, out)
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

    Temporary outputs of interrupted medxai runs are skipped: any file whose path below the given folder
    has a component that starts with ``.`` and contains ``.partial`` (a half-written file, or a file
    inside a half-written ``.name.XXXX.partial`` folder left by a killed export). Other hidden files and
    folders are NOT skipped. Naming such a temporary file or folder directly is refused.

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    ValueError
        A path given directly that is a temporary ``.partial`` output.
    """
    out: list[Path] = []
    skipped = 0
    for p in map(Path, paths):
        if is_partial(p) and p.exists():
            raise ValueError(
                f"'{p}' is (inside) the unfinished temporary output of an interrupted medxai run (a name that "
                "starts with '.' and contains '.partial'); send the finished output instead (rerun the export if "
                "it is missing)."
            )
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file():
                    continue
                if is_partial(f.relative_to(p)):
                    skipped += 1
                elif _is_dicom(f):
                    out.append(f)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"'{p}' does not exist; give DICOM files or folders to send.")
    if skipped:
        logger.info("skipped %d file(s) of unfinished runs (inside or named '.*.partial*')", skipped)
    return out


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _read_all(files: Sequence[Path]) -> list[Dataset]:
    out: list[Dataset] = []
    for f in files:
        try:
            out.append(pydicom.dcmread(str(f)))
        except Exception as e:
            from .errors import UnreadableFileError

            raise UnreadableFileError(f"Cannot read DICOM file '{f}' to send: {type(e).__name__}: {e}.", str(f)) from e
    return out


def push(
    url: str,
    files: Iterable[str | os.PathLike[str]],
    *,
    timeout: float = 60.0,
    batch: int = 50,
    auth: HttpAuth = None,
    tls: TlsFiles | None = None,
) -> list[str]:
    """Store files with STOW-RS.

    Parameters
    ----------
    url : str
        DICOMweb base URL (credentials in it are moved into basic auth and never shown).
    files : iterable of path
        Files or folders (searched recursively for DICOM files, skipping unfinished ``.partial`` outputs;
        see `collect_dicom_files`). They are only read.
    timeout : float
        Seconds per HTTP request (no retries).
    batch : int
        Instances per STOW-RS request.
    auth, tls
        As for `pull`.

    Returns
    -------
    list of str
        SOP Instance UIDs the PACS reported as stored.
    """
    paths = collect_dicom_files(files)
    if not paths:
        raise ValueError("no DICOM files to push; give files or folders that hold DICOM files.")
    conn = _client(url, timeout, auth, tls)
    stored: list[str] = []
    for i in range(0, len(paths), max(1, batch)):
        datasets = _read_all(paths[i : i + batch])
        try:
            resp = conn.client.store_instances(datasets)
        except Exception as e:
            raise _http_error(conn, f"STOW-RS store of {len(datasets)} instance(s)", e, timeout) from e
        failed = resp.get("FailedSOPSequence") if resp is not None else None
        if failed:
            reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
            raise PacsError(
                f"PACS at {conn.shown} refused {len(failed)} of {len(datasets)} instance(s) "
                f"(failure reason {', '.join(reasons)}).",
                conn.shown,
                int(failed[0].get("FailureReason", 0)) or None,
            )
        for item in (resp.get("ReferencedSOPSequence") or []) if resp is not None else []:
            stored.append(str(item.ReferencedSOPInstanceUID))
    logger.info("pushed %d instance(s) to %s", len(stored), conn.shown)
    return stored


DimseTls = TlsFiles | bool | None


def _tls_args(tls: DimseTls, host: str) -> tuple[ssl.SSLContext, str] | None:
    if tls is None or tls is False:
        return None
    files = TlsFiles() if tls is True else tls
    if not isinstance(files, TlsFiles):
        raise TypeError(f"tls must be None, True or a TlsFiles; got {type(tls).__name__}.")
    return files.ssl_context(), host


def _association(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str,
    timeout: float,
    contexts: Sequence[tuple[str, Sequence[str]]],
    tls: DimseTls = None,
) -> Any:
    from pynetdicom import AE

    tls_args = _tls_args(tls, host)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    where = _where(called_aet, host, port, tls)
    assoc = ae.associate(host, int(port), ae_title=called_aet, tls_args=tls_args)
    if not assoc.is_established:
        if assoc.is_rejected:
            why = "rejected the association (check the AE titles and that the PACS knows this AE)"
        elif assoc.is_aborted:
            why = "aborted the association"
        else:
            why = f"did not accept an association within {timeout:g} s (refused or unreachable)"
        if tls_args is not None and not assoc.is_rejected:
            # pynetdicom reports a failed handshake as an aborted or failed association; say what to check
            why += (
                ", or the TLS handshake failed (is the port a TLS port? give the PACS's CA with "
                "--ca-bundle, and --client-cert/--client-key if it wants a client certificate)"
            )
        raise PacsError(f"PACS at {where} {why}; calling AE {calling_aet!r}.", where)
    return assoc


def _where(called_aet: str, host: str, port: int, tls: DimseTls) -> str:
    return f"dicom{'s' if tls not in (None, False) else ''}://{called_aet}@{host}:{port}"


def c_echo(
    host: str, port: int, *, called_aet: str = "ANY-SCP", calling_aet: str = "MEDXAI", timeout: float = 10.0, tls: DimseTls = None
) -> int:
    """DICOM verification (C-ECHO); returns the DIMSE status (0 = success) or raises PacsError.

    ``tls``: None/False for plain TCP; True for TLS verified against the system CAs; a `TlsFiles` for TLS
    with a CA bundle and/or client certificate. The server's hostname (``host``) is checked.
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    verification = "1.2.840.10008.1.1"
    assoc = _association(
        host, port, called_aet, calling_aet, timeout, [(verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])], tls
    )
    where = _where(called_aet, host, port, tls)
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
    tls: DimseTls = None,
) -> list[str]:
    """Send files with DIMSE C-STORE (for PACS without DICOMweb).

    Returns the SOP Instance UIDs stored; raises PacsError naming host:port and the DIMSE status of the
    first refused instance (warnings 0xB000-0xB007 count as stored). ``files`` as for `push`; ``tls`` as
    for `c_echo`.
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
    where = _where(called_aet, host, port, tls)
    assoc = _association(host, port, called_aet, calling_aet, timeout, [(k, sorted(v)) for k, v in contexts.items()], tls)
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

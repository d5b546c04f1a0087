"""atomicfs: write-then-rename for every output of the project, and how to recognise unfinished ones.

An output is written under a hidden temporary name beside its final name and renamed onto it only
when complete, so an interrupted run never leaves a half-written file or folder that looks finished
(DESIGN.md, convention 6). This is the one copy of that helper: the bottom layer of the project.
It imports only the standard library and nothing from the project, so ``dicom_io`` and ``medxai``
(which never import each other) and ``pipelines`` all use it.

Temporary names
    ``.<final name>.p<pid>h<host>r<random>.partial<final suffixes>`` (``<host>``: 6 hex digits of the
    SHA-256 of the host name; a folder being replaced is first
    moved aside to the same name with ``.partial-old``). They start with ``.`` and contain ``.partial``:
    `is_partial` recognises them, so readers (the ingest scanner, the PACS push collector) skip them.
Permissions
    Temporary files and folders are created with ``0o666`` / ``0o777`` filtered by the umask (what
    ``open`` and ``mkdir`` do), not with the private ``0o600`` / ``0o700`` of ``tempfile``: the mode
    survives the rename, and outputs must be readable by other accounts (3D Slicer, a PACS import job)
    exactly when the user's umask says so (``0o644`` / ``0o755`` under umask 022).
Stale partials
    A killed run (SIGKILL, power loss) cannot clean up. The next `atomic_path` / `atomic_dir` for the
    same final name removes the partials that an earlier run left for that name (`remove_stale_partials`):
    those of a process on this host that no longer runs, and those of another host or of an older
    medxai (no owner recorded) once older than `STALE_AFTER_S`. Nothing else is ever deleted.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "PARTIAL_MARK",
    "STALE_AFTER_S",
    "atomic_dir",
    "atomic_path",
    "is_partial",
    "partial_name",
    "remove_stale_partials",
]

logger = logging.getLogger(__name__)

#: Every temporary name contains this (and starts with ``.``).
PARTIAL_MARK = ".partial"

#: Partials whose owner cannot be checked (another host, or an older medxai) are stale after this long.
STALE_AFTER_S = 24 * 3600.0

_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def _suffix(final: Path) -> str:
    # writers that look at the extension (.nii.gz, .nrrd, .dcm) must see the final one
    return "".join(final.suffixes)


def partial_name(final: str | os.PathLike[str], *, old: bool = False) -> str:
    """A fresh temporary name for ``final`` (a name only, in the same folder): hidden, owner recorded.

    Parameters
    ----------
    final : path
        The final file or folder.
    old : bool
        The name for the previous version of a folder while it is being replaced.
    """
    f = Path(final)
    mark = f"{PARTIAL_MARK}-old" if old else PARTIAL_MARK
    return f".{f.name}.p{os.getpid()}h{_HOST}r{secrets.token_hex(3)}{mark}{_suffix(f)}"


def is_partial(path: str | os.PathLike[str]) -> bool:
    """True when any component of ``path`` is a temporary (unfinished) name: starts with ``.`` and
    contains ``.partial``.

    Readers that walk a folder call it on each path (relative to the folder they were given, if that
    folder itself might sit inside a partial one) and skip what it flags.
    """
    return any(part.startswith(".") and PARTIAL_MARK in part for part in Path(path).parts)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process: another block writing the same name is still open
    if os.name != "posix":
        return True  # no cheap check; such partials are left to the age rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another account
    except OSError:
        return True
    return True


def _scan(parent: Path) -> list[str]:
    """Names in ``parent`` that could be partials (hidden, with ``.partial`` or ending ``.old``)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return [n for n in names if n.startswith(".") and (PARTIAL_MARK in n or n.endswith(".old"))]


# Per process, the candidate partials of each folder written into: writing N files into one folder must
# not list that folder N times (pulling a 5000-instance study would be quadratic). The list is reused
# only while the folder's mtime is the one our own last create/rename left (nobody else added or removed
# an entry since) and for at most _RESCAN_S.
_RESCAN_S = 30.0
_SCANNED: dict[str, tuple[float, int, list[str]]] = {}


def _mtime_ns(parent: Path) -> int:
    try:
        return os.stat(parent).st_mtime_ns
    except OSError:
        return -1


def _cached_scan(parent: Path) -> list[str]:
    key, t = str(parent), time.monotonic()
    hit = _SCANNED.get(key)
    if hit is not None and t - hit[0] < _RESCAN_S and hit[1] == _mtime_ns(parent):
        return hit[2]
    if len(_SCANNED) > 4096:
        _SCANNED.clear()
    names = _scan(parent)
    _SCANNED[key] = (t, _mtime_ns(parent), names)
    return names


def _note_own_change(parent: Path) -> None:
    """Record the folder's mtime after our own create/rename, so the cached scan stays valid."""
    hit = _SCANNED.get(str(parent))
    if hit is not None:
        _SCANNED[str(parent)] = (hit[0], _mtime_ns(parent), hit[2])


def remove_stale_partials(final: str | os.PathLike[str], *, now: float | None = None) -> list[Path]:
    """Remove the temporary files/folders an earlier, interrupted run left for ``final``.

    Only names of the exact pattern this module creates for ``final`` are considered (see the module
    docstring); a partial is removed when its process (same host) is gone, or, when its owner cannot be
    checked (other host; the ``tempfile`` names of older releases), when it is older than
    `STALE_AFTER_S`. Partials of a live process are never touched.

    Parameters
    ----------
    final : path
        The final file or folder whose leftovers to remove.
    now : float, optional
        The time (``time.time()``) to judge ages against.

    Returns
    -------
    list of Path
        What was removed.
    """
    parent = Path(final).parent
    return _remove_stale(Path(final), _scan(parent), now)


def _remove_stale(f: Path, candidates: list[str], now: float | None) -> list[Path]:
    prefix = f".{f.name}."
    mine = [n for n in candidates if n.startswith(prefix)]
    if not mine:
        return []
    name, sfx = re.escape(f.name), re.escape(_suffix(f))
    ours = re.compile(rf"\.{name}\.p(\d+)h([0-9a-f]{{6}})r[0-9a-f]{{6}}\.partial(?:-old)?{sfx}")
    # what tempfile.mkstemp/mkdtemp produced before this module existed, and the old ".<name>.old"
    legacy = re.compile(rf"\.{name}\.(?:[a-z0-9_]{{8}}\.partial{sfx}|old)")
    t = time.time() if now is None else now
    removed: list[Path] = []
    for n in mine:
        p = f.parent / n
        m = ours.fullmatch(n)
        try:
            st = p.lstat()
        except OSError:
            continue
        if m is not None and m.group(2) == _HOST:
            stale = not _pid_alive(int(m.group(1)))
        elif m is not None or legacy.fullmatch(n):
            stale = t - st.st_mtime > STALE_AFTER_S
        else:
            continue
        if not stale:
            continue
        try:
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            logger.warning("could not remove the stale partial output %s: %s", p, err)
            continue
        logger.info("removed %s, left by an interrupted run", p)
        removed.append(p)
    for p in removed:
        try:
            candidates.remove(p.name)
        except ValueError:
            pass
    return removed


def _create(final: Path, make: str) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final, _cached_scan(final.parent), None)
    for _ in range(100):
        tmp = final.with_name(partial_name(final))
        try:
            if make == "dir":
                os.mkdir(tmp, 0o777)  # the umask applies, unlike tempfile.mkdtemp's 0o700
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        _note_own_change(final.parent)
        return tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside '{final}'")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file exists (empty) when the block starts; it keeps the final suffixes so writers
    that look at the extension behave the same. An existing ``path`` is replaced atomically. If the
    block raises (also ``KeyboardInterrupt``), the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    tmp = _create(final, "file")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _note_own_change(final.parent)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    Parameters
    ----------
    path : path
        The final folder.
    replace : bool
        Replace an existing ``path`` (only after the new folder is complete). With ``False`` an existing
        ``path`` raises `FileExistsError` at the end, and the new folder is discarded.

    If the block raises (also ``KeyboardInterrupt``), the temporary folder is removed and ``path`` is
    untouched.
    """
    final = Path(path)
    tmp = _create(final, "dir")
    try:
        yield tmp
        if not final.exists() and not final.is_symlink():
            os.rename(tmp, final)
        elif not replace:
            raise FileExistsError(errno.EEXIST, f"'{final}' already exists and replace=False", str(final))
        else:
            # a folder cannot be renamed onto a non-empty one: move the old aside (under a partial
            # name, so a kill between the two renames leaves nothing that looks finished), then drop it
            old = final.with_name(partial_name(final, old=True))
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _note_own_change(final.parent)

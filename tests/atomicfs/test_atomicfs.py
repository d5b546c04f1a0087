"""atomicfs: write-then-rename with umask-respecting modes, and stale partials of killed runs."""

from __future__ import annotations

import ast
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import atomicfs
from atomicfs import STALE_AFTER_S, atomic_dir, atomic_path, is_partial, partial_name, remove_stale_partials


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _run_killed(code: str) -> None:
    """Run ``code`` in a fresh interpreter that SIGKILLs itself inside the atomic block (a killed run)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_modes_follow_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "a.nii.gz") as tmp:
            assert _mode(tmp) == file_mode  # the temporary file already has the final mode
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f.txt").write_text("y")
            with atomic_path(tmp / "g.dcm") as t2:
                t2.write_bytes(b"z")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.nii.gz") == file_mode
    assert _mode(tmp_path / "d") == dir_mode
    assert _mode(tmp_path / "d" / "f.txt") == file_mode and _mode(tmp_path / "d" / "g.dcm") == file_mode


def test_temporary_names_are_hidden_partials_with_the_final_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "ct.nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".ct.nii.gz.") and tmp.name.endswith(".partial.nii.gz")
        assert is_partial(tmp) and not is_partial(tmp_path / "ct.nii.gz")
        tmp.write_bytes(b"1")
    assert (tmp_path / "ct.nii.gz").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_an_exception_inside_the_block_leaves_nothing(tmp_path: Path, exc: BaseException) -> None:
    (tmp_path / "keep.txt").write_text("old")
    (tmp_path / "keepdir").mkdir()
    (tmp_path / "keepdir" / "x").write_text("old")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for final in ("new.txt", "keep.txt"):
        with pytest.raises(type(exc)):
            with atomic_path(tmp_path / final) as tmp:
                tmp.write_text("half")
                raise exc
    for final in ("newdir", "keepdir"):
        with pytest.raises(type(exc)):
            with atomic_dir(tmp_path / final) as tmp:
                (tmp / "x").write_text("half")
                raise exc
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "keep.txt").read_text() == "old" and (tmp_path / "keepdir" / "x").read_text() == "old"


def test_atomic_dir_replaces_only_when_asked(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(final, replace=False) as tmp:
            (tmp / "a").write_text("2")
    assert (final / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(final) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_partials_of_a_killed_run_are_removed_by_the_next_run(tmp_path: Path) -> None:
    _run_killed(f"""
        import os, signal
        from atomicfs import atomic_dir, atomic_path
        with atomic_path({str(tmp_path / "vol.nrrd")!r}) as t:
            t.write_bytes(b"half")
            with atomic_dir({str(tmp_path / "case1")!r}) as d:
                (d / "half.dcm").write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(is_partial(n) for n in left), left
    with atomic_dir(tmp_path / "case1") as d:
        (d / "done.dcm").write_bytes(b"ok")
    with atomic_path(tmp_path / "vol.nrrd") as t:
        t.write_bytes(b"ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case1", "vol.nrrd"]
    assert [p.name for p in (tmp_path / "case1").iterdir()] == ["done.dcm"]


def test_a_partial_left_after_this_process_wrote_there_is_still_found(tmp_path: Path) -> None:
    """This process lists a folder once and reuses the list; another process's leftover must not hide."""
    for i in range(3):
        with atomic_path(tmp_path / f"f{i}.dcm") as t:
            t.write_bytes(b"ok")
    _run_killed(f"""
        import os, signal
        from atomicfs import atomic_path
        with atomic_path({str(tmp_path / "f1.dcm")!r}) as t:
            t.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert len([p for p in tmp_path.iterdir() if is_partial(p.name)]) == 1
    with atomic_path(tmp_path / "f1.dcm") as t:
        t.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0.dcm", "f1.dcm", "f2.dcm"]


def test_only_our_own_stale_partials_for_that_name_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    host = atomicfs._HOST
    keep = [
        ".case1.bak",  # hidden, not a partial
        "case1.partial",  # not hidden
        f".case2.p{dead}h{host}r000000.partial",  # another final name
        f".case1.nii.gz.p{dead}h{host}r000000.partial.nii.gz",  # a partial of 'case1.nii.gz', not of 'case1'
        f".case1.p{os.getpid()}h{host}r000000.partial",  # this process is alive
        ".case1.abcd1234.partial",  # an older medxai's name, but fresh
        f".case1.p{dead}h{'0' * 6 if host != '0' * 6 else '1' * 6}r000000.partial",  # another host, fresh
    ]
    gone = [
        f".case1.p{dead}h{host}r0a0b0c.partial",
        f".case1.p{dead}h{host}r0a0b0d.partial-old",
        ".case1.old",
        ".case1.zz_9yy8x.partial",
    ]
    for n in keep + gone:
        (tmp_path / n).mkdir()
        (tmp_path / n / "f").write_text("x")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(tmp_path / ".case1.old", (old, old))
    os.utime(tmp_path / ".case1.zz_9yy8x.partial", (old, old))
    removed = remove_stale_partials(tmp_path / "case1")
    assert sorted(p.name for p in removed) == sorted(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    # once old enough, a partial whose owner cannot be checked goes too
    later = time.time() + STALE_AFTER_S + 60
    removed = remove_stale_partials(tmp_path / "case1", now=later)
    assert sorted(p.name for p in removed) == [".case1.abcd1234.partial", keep[-1]]


def test_a_running_writers_partial_is_left_alone(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from atomicfs import atomic_dir
        with atomic_dir({str(tmp_path / "case1")!r}) as d:
            (d / "f").write_text("x")
            print(d.name, flush=True)
            sys.stdin.readline()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        name = p.stdout.readline().strip()  # type: ignore[union-attr]
        assert remove_stale_partials(tmp_path / "case1") == [] and (tmp_path / name).is_dir()
    finally:
        p.communicate("\n", timeout=60)
    assert p.returncode == 0 and sorted(x.name for x in tmp_path.iterdir()) == ["case1"]


@pytest.mark.parametrize(
    "path, expected",
    [
        ("a/.case1.p1h000000r000000.partial/x.dcm", True),
        (".ct.nii.gz.abc.partial.nii.gz", True),
        ("/data/.x.partial-old/y", True),
        ("a/b/c.dcm", False),
        ("a/.hidden/c.dcm", False),
        ("a/x.partial/c.dcm", False),
    ],
)
def test_is_partial(path: str, expected: bool) -> None:
    assert is_partial(Path(path)) is expected


def test_partial_name_has_the_pattern_is_partial_and_cleanup_know() -> None:
    n = partial_name("/x/ct.nii.gz")
    assert n.startswith(".ct.nii.gz.p") and n.endswith(".partial.nii.gz") and is_partial(n)
    assert partial_name("/x/d", old=True).endswith(".partial-old")


def test_atomicfs_imports_nothing_from_the_project() -> None:
    """The bottom layer: dicom_io and medxai both import it, so it may import neither (nor pipelines)."""
    code = "import sys, atomicfs; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert not {"dicom_io", "medxai", "pipelines", "torch", "numpy"} & set(ast.literal_eval(out))

"""Ctrl-C ends a command with exit code 130 and one line, never a silent exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pipelines.ingest
from pipelines.cli import EXIT_INTERRUPTED, main


def test_keyboard_interrupt_in_a_command_exits_130_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipelines.ingest, "ingest", interrupted)
    code = main(["ingest", str(tmp_path), "-o", str(tmp_path / "x.nii.gz")])
    err = capsys.readouterr().err
    assert code == EXIT_INTERRUPTED == 130
    assert [line for line in err.splitlines() if line.strip()] == ["Interrupted; nothing half-written was left looking finished."]
    assert not (tmp_path / "x.nii.gz").exists()


def test_an_explicit_exit_code_from_a_command_is_kept(monkeypatch) -> None:
    import typer

    def exits(*_a: object, **_k: object) -> None:
        raise typer.Exit(code=3)

    monkeypatch.setattr(pipelines.ingest, "ingest", exits)
    assert main(["ingest", ".", "-o", "x.nii.gz"]) == 3


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_to_a_running_medxai_process_exits_130(tmp_path: Path) -> None:
    # A real process and a real SIGINT, as a terminal's Ctrl-C sends it.
    script = textwrap.dedent(
        """
        import sys, time
        import pipelines.ingest
        from pipelines.cli import main

        def slow(*a, **k):
            print("ready", flush=True)
            time.sleep(30)

        pipelines.ingest.ingest = slow
        sys.argv = ["medxai", "ingest", sys.argv[1], "-o", sys.argv[2]]
        main()  # as the installed `medxai` script calls it
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), str(tmp_path / "x.nii.gz")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = proc.stdout.readline()
        assert line.strip() == "ready", line
        assert time.monotonic() < deadline
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Interrupted" in err and "Traceback" not in err

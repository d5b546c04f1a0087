"""The ``medxai`` command line.

Commands live in ``pipelines/commands/`` (one module each, found at start-up). Errors become one
readable paragraph and a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
import traceback
from collections.abc import Sequence

import click
import typer
from rich.console import Console
from rich.markup import escape

from . import commands as _commands

__all__ = ["app", "main", "EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_INTERRUPTED"]

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
_INTERRUPTED = "Interrupted; nothing half-written was left looking finished."

app = typer.Typer(
    name="medxai",
    help="Counterfactual explanations of black-box classifiers on medical images (CT, fundus).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    """medxai: read DICOM, explain a model's decision with counterfactuals, write results back."""
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _register_commands() -> None:
    for mod in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_commands.__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def _is_bad_input(e: BaseException) -> bool:
    from dicom_io.errors import DicomIOError

    bad = (DicomIOError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, KeyError)
    cur: BaseException | None = e
    while cur is not None:  # a pipeline step re-raises naming itself; the cause says what was wrong
        if isinstance(cur, bad):
            return True
        cur = cur.__cause__
    return False


def _paragraph(e: BaseException) -> str:
    """The error and its causes as one paragraph (no traceback)."""
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        msg = str(cur).strip() or type(cur).__name__
        if not any(msg in p for p in parts):
            parts.append(msg)
        cur = cur.__cause__
    return " Cause: ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medxai`` script; returns (and exits with) the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        # With standalone_mode=False click/typer *return* the code of an Exit instead of raising it, and
        # typer turns Ctrl-C into Exit(130) on the way; commands themselves return None.
        rv = app(args=args, prog_name="medxai", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if _state["debug"] or "--debug" in args:
            traceback.print_exc()
        else:
            err.print(f"[bold red]Error:[/] {escape(_paragraph(e))}")
            err.print("(Run with --debug for the full traceback.)", style="dim")
        code = EXIT_BAD_INPUT if _is_bad_input(e) else EXIT_FAILURE
    if code == EXIT_INTERRUPTED:
        err.print(_INTERRUPTED)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()

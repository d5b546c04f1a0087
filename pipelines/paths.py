"""Checks on the paths a job is given: medxai never writes into its input."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_output_outside_input"]


def check_output_outside_input(
    out: str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    option: str = "--out",
) -> None:
    """Refuse an output that is an input, or lies inside an input folder.

    Both sides are resolved (symlinks followed, ``..`` removed) before comparing, so a link to the
    input folder or ``IN/../IN/x`` is recognised. An input that is a file only forbids the same path:
    writing beside a single input file is allowed.

    Parameters
    ----------
    out : path
        The output file or folder (need not exist).
    inputs : path or iterable of paths
        The input file(s) or folder(s).
    option : str
        The option that gave ``out``, named in the error.

    Raises
    ------
    ValueError
        If ``out`` equals an input, or lies inside an input folder.
    """
    seq = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    o = Path(out).expanduser().resolve()
    for i in seq:
        src = Path(i).expanduser().resolve()
        if o == src:
            raise ValueError(
                f"{option} '{out}' is the input '{i}'; medxai never writes into its input. Choose an output outside the input."
            )
        if src.is_dir() and o.is_relative_to(src):
            raise ValueError(
                f"{option} '{out}' lies inside the input folder '{i}'; medxai never writes into its input "
                f"(the outputs would be read back as input next time). Choose an output folder outside it."
            )

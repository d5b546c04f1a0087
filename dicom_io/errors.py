"""Errors raised by dicom_io. Each message is one readable paragraph that names the file and the fix."""

from __future__ import annotations

__all__ = [
    "DicomIOError",
    "UnreadableFileError",
    "SeriesSelectionError",
    "GeometryError",
    "MissingSliceError",
    "UnsupportedInputError",
]


class DicomIOError(ValueError):
    """Base class: bad or unsupported input data. ``path`` names the file or folder concerned."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class UnreadableFileError(DicomIOError):
    """A file that looks like DICOM (or an image) but cannot be parsed or is truncated."""


class SeriesSelectionError(DicomIOError):
    """No series, or several series, where exactly one was needed."""


class GeometryError(DicomIOError):
    """Slices that do not form one regular volume (mixed orientations, duplicates, size changes)."""


class MissingSliceError(GeometryError):
    """A gap in the slice positions: at least one slice is missing."""


class UnsupportedInputError(DicomIOError):
    """A kind of file or object this reader does not handle."""

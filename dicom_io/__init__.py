"""dicom_io: reading and writing DICOM, NIfTI, NRRD and photographs, with geometry and provenance.

Never imports torch or medxai.
"""

from .dicom_series import SeriesInfo, find_series, read_dicom_volume, read_series
from .errors import (
    DicomIOError,
    GeometryError,
    MissingSliceError,
    SeriesSelectionError,
    UnreadableFileError,
    UnsupportedInputError,
)
from .naming import safe_filename
from .photo import read_photo, write_photo
from .reader import read_image
from .text import printable
from .types import FrameRef, Photo, SourceRef, Volume
from .volume_files import read_nifti, read_nrrd, write_nifti, write_nrrd, write_volume
from .write_series import StudyInfo, write_ct_series, write_photo_dicom

__all__ = [
    "FrameRef",
    "Photo",
    "SourceRef",
    "Volume",
    "SeriesInfo",
    "find_series",
    "read_series",
    "read_dicom_volume",
    "read_image",
    "read_photo",
    "write_photo",
    "read_nifti",
    "read_nrrd",
    "write_nifti",
    "write_nrrd",
    "write_volume",
    "StudyInfo",
    "write_ct_series",
    "write_photo_dicom",
    "safe_filename",
    "printable",
    "DicomIOError",
    "UnreadableFileError",
    "SeriesSelectionError",
    "GeometryError",
    "MissingSliceError",
    "UnsupportedInputError",
]

"""Mutation fuzzing of ``medxai ingest`` (issue 12, "a fuzzer that keeps it so").

A few hundred seeded mutations of real DICOM files (pydicom / pydicom-data) and of a phantom CT series
go through the CLI in process (`fuzzing.run_case`): every input ends in exit 0 or exit 2 with one
paragraph, never a traceback, exit 1 or a hang; every volume medxai accepts equals pydicom's own decode
of the same files and keeps every slice. The targeted cases below are the bugs the fuzzer found, each
reproduced by one explicit mutation. ``benchmarks/fuzz_ingest.py`` runs the same thing longer.
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import ct_like, pydicom_file
from fuzzing import MUTATORS, Outcome, element_index, make_cases, run_case, seed_inputs

from dicom_io import DicomIOError, StudyInfo, UnreadableFileError, UnsupportedInputError, Volume, read_image, write_ct_series
from pipelines.cli import main

# Damaged headers make pydicom warn on almost every input; the verdicts are what is tested.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

# Enough cases that every mutator meets every kind of seed; about 10 s on two idle cores.
N_CASES = 600
SEED = 12
TIME_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    work = tmp_path_factory.mktemp("fuzz")
    cases = make_cases(seed_inputs(work / "seeds"), N_CASES, SEED)
    return [run_case(c, work / "cases", TIME_LIMIT_S) for c in cases]


def test_fuzzed_inputs_are_read_exactly_or_refused_in_one_paragraph(outcomes: list[Outcome]) -> None:
    failures = [o for o in outcomes if o.failure is not None]
    assert not failures, f"{len(failures)} of {len(outcomes)} fuzzed inputs failed:\n" + "\n".join(
        o.describe()[:600] for o in failures[:15]
    )
    assert max(o.seconds for o in outcomes) < TIME_LIMIT_S


def test_the_fuzzer_reaches_both_verdicts_for_every_mutator_and_seed(outcomes: list[Outcome]) -> None:
    # Guards the fuzzer itself: a change that made every input unreadable (or every mutation a no-op)
    # would pass the test above without checking anything.
    verdicts = Counter((o.case.mutator, o.exit_code) for o in outcomes)
    for name in MUTATORS:
        assert verdicts[(name, 2)] > 0, f"no input mutated by {name} was refused"
    for name in ("flip_bytes", "change_vr", "swap_tags", "duplicate_element", "remove_element", "pixel_length"):
        assert verdicts[(name, 0)] > 0, f"no input mutated by {name} was accepted (and compared to pydicom)"
    accepted_seeds = {o.case.seed for o in outcomes if o.accepted}
    assert {"CT_small.dcm", "MR_small_RLE.dcm", "phantom-5-slices-none", "phantom-5-slices-rle"} <= accepted_seeds
    assert sum(o.accepted and len(o.case.files) == 5 for o in outcomes) >= 20


def test_a_refused_series_names_the_damaged_file(outcomes: list[Outcome]) -> None:
    series = [o for o in outcomes if len(o.case.files) > 1 and o.exit_code == 2]
    assert len(series) >= 20
    unnamed = [o for o in series if o.case.mutated_file not in o.output]
    assert not unnamed, "\n".join(f"{o.case.label()}: {o.output.strip()[-300:]}" for o in unnamed[:5])


def test_the_cases_are_the_same_bytes_every_run(tmp_path: Path) -> None:
    # A failure seen once must be seen again: the seeds (phantoms included) and mutations are fixed.
    # (write_ct_series let pydicom's compress() draw a random SOPInstanceUID for compressed series.)
    runs = [make_cases(seed_inputs(tmp_path / f"run{i}"), 60, SEED) for i in range(2)]
    assert [c.files for c in runs[0]] == [c.files for c in runs[1]]
    assert {c.seed for c in runs[0]} >= {"phantom-5-slices-rle", "phantom-5-slices-none"}


# ---------------------------------------------------------------------------------------------------
# The bugs the fuzzer found, one explicit mutation each
# ---------------------------------------------------------------------------------------------------


def _element(data: bytes, tag: int):  # type: ignore[no-untyped-def]
    return next(e for e in element_index(data) if e.tag == tag)


def remove(tag: int) -> Callable[[bytes], bytes]:
    def f(data: bytes) -> bytes:
        e = _element(data, tag)
        return data[: e.start] + data[e.end :]

    return f


def swap(tag_a: int, tag_b: int) -> Callable[[bytes], bytes]:
    def f(data: bytes) -> bytes:
        a, b = _element(data, tag_a), _element(data, tag_b)
        buf = bytearray(data)
        buf[a.start : a.start + 4] = data[b.start : b.start + 4]
        buf[b.start : b.start + 4] = data[a.start : a.start + 4]
        return bytes(buf)

    return f


def set_vr(tag: int, vr: bytes) -> Callable[[bytes], bytes]:
    def f(data: bytes) -> bytes:
        e = _element(data, tag)
        return data[: e.start + 4] + vr + data[e.start + 6 :]

    return f


def set_length(tag: int, length: int) -> Callable[[bytes], bytes]:
    def f(data: bytes) -> bytes:
        e = _element(data, tag)
        off, size = e.length_field
        return data[:off] + length.to_bytes(size, "little") + data[off + size :]

    return f


def flip(pos: int, xor: int) -> Callable[[bytes], bytes]:
    def f(data: bytes) -> bytes:
        return data[:pos] + bytes([data[pos] ^ xor]) + data[pos + 1 :]

    return f


def with_pydicom(**changes: object) -> Callable[[bytes], bytes]:
    """Set (value) or delete (None) attributes with pydicom and write the file back."""

    def f(data: bytes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(data))
        for kw, value in changes.items():
            if value is None:
                del ds[kw]
            else:
                setattr(ds, kw, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    return f


def _phantom(folder: Path, compression: str = "none") -> list[Path]:
    vol = Volume(ct_like((5, 16, 16), 3), (0.8, 0.8, 2.5), (-6.0, -6.0, 40.0), np.eye(3))
    return write_ct_series(vol, folder, StudyInfo(uid_seed=f"fuzz-regress-{compression}"), compression=compression)


# (id, input: pydicom file name or "phantom[-rle]" (its first, end slice), mutation, error type)
FOUND: list[tuple[str, str, Callable[[bytes], bytes], type[DicomIOError]]] = [
    # pylibjpeg-rle panics on this damaged segment; pyo3 raises PanicException, a BaseException that
    # went past every handler and ended the CLI with a traceback
    ("rle-decoder-panic", "MR_small_RLE.dcm", flip(5044, 0x01), UnreadableFileError),
    # the fast header path took the moved pixel-data tag at face value and read the header as pixels
    ("pixel-data-tag-on-bits-stored", "phantom", swap(0x7FE00010, 0x00280101), UnreadableFileError),
    # a missing intercept was taken as 0: every voxel 1024 HU off
    ("rescale-intercept-removed", "CT_small.dcm", remove(0x00281052), UnreadableFileError),
    ("rescale-slope-empty", "phantom", with_pydicom(RescaleSlope=""), UnreadableFileError),
    ("rescale-slope-not-ds", "phantom-rle", set_vr(0x00281053, b"SH"), UnreadableFileError),
    # pixel descriptions pydicom refuses were decoded anyway (indices, or wrongly signed values)
    ("photometric-removed", "phantom", remove(0x00280004), UnreadableFileError),
    ("palette-color", "phantom", with_pydicom(PhotometricInterpretation="PALETTE COLOR"), UnsupportedInputError),
    ("pixel-representation-2", "phantom", with_pydicom(PixelRepresentation=2), UnreadableFileError),
    ("bits-stored-0", "phantom", with_pydicom(BitsStored=0), UnreadableFileError),
    ("samples-per-pixel-removed", "CT_small.dcm", remove(0x00280002), UnreadableFileError),
    # a Part 10 file without its transfer syntax was guessed to be native
    ("transfer-syntax-removed", "phantom", remove(0x00020010), UnreadableFileError),
    # exit 1 (not a bad-input error) from pydicom's lazy conversion of a damaged VR
    ("unknown-vr", "CT_small.dcm", set_vr(0x00080070, b"L\x1e"), UnreadableFileError),
    ("uid-read-as-fd", "CT_small.dcm", set_vr(0x00200052, b"FD"), UnreadableFileError),
    # bare TypeError / ValueError that named no file
    ("columns-removed-jpeg-ls", "MR_small_jpeg_ls_lossless.dcm", remove(0x00280011), UnreadableFileError),
    ("samples-per-pixel-two-values", "MR_small_RLE.dcm", set_length(0x00280002, 4), UnreadableFileError),
    ("slice-thickness-is-text", "MR_small_implicit.dcm", swap(0x00080070, 0x00180050), UnreadableFileError),
    ("series-number-is-text", "MR_small_RLE.dcm", swap(0x00200011, 0x00204000), UnreadableFileError),
    # a header misparsed after a bad length lost its pixel data and SOP class and was skipped as a
    # "non-image object": the series came out one slice short without a word
    ("sop-class-length-short", "phantom", set_length(0x00080016, 24), UnreadableFileError),
    ("sop-class-length-long", "phantom-rle", set_length(0x00080016, 9949), UnreadableFileError),
]


@pytest.mark.parametrize("source, mutate, error", [f[1:] for f in FOUND], ids=[f[0] for f in FOUND])
def test_damage_found_by_the_fuzzer_is_an_error_naming_the_file(
    source: str,
    mutate: Callable[[bytes], bytes],
    error: type[DicomIOError],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "in"
    if source.startswith("phantom"):
        paths = _phantom(folder, "rle" if source.endswith("rle") else "none")
        target = paths[0]  # the first slice along the normal: losing it leaves no gap behind
    else:
        folder.mkdir()
        target = folder / source
        shutil.copy(pydicom_file(source), target)
    target.write_bytes(mutate(target.read_bytes()))
    src = folder if source.startswith("phantom") else target
    with pytest.raises(error) as e:
        read_image(src)
    assert target.name in str(e.value)
    capsys.readouterr()
    assert main(["ingest", str(src), "-o", str(tmp_path / "out.nrrd")]) == 2
    err = capsys.readouterr().err
    assert target.name in err and "Traceback" not in err
    assert not (tmp_path / "out.nrrd").exists()

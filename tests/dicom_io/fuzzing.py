"""A seeded, bounded mutation fuzzer for ``medxai ingest``.

Shared by ``tests/dicom_io/test_fuzz_ingest.py`` (a few hundred cases, every test run) and
``benchmarks/fuzz_ingest.py`` (thousands). Nothing here is random unless seeded: the same ``(n, seed)``
gives the same cases, byte for byte.

Inputs are real DICOM files shipped by pydicom and pydicom-data (Explicit and Implicit VR, big endian,
RLE, JPEG-LS, an Enhanced CT) and a small phantom CT series written by ``dicom_io.write_ct_series``.
Each case mutates one file (flipped bytes, a truncation, a changed VR, a changed element length,
swapped tags, a duplicated or removed element, garbage in the pixel-data length), runs
``medxai ingest`` in process and judges the outcome:

* the exit code is 0 (accepted) or 2 (bad input, one paragraph); exit 1, any other code, an uncaught
  exception or a printed traceback is a failure;
* no input takes longer than the time limit (a ``SIGALRM`` guard interrupts it);
* an accepted volume equals what pydicom decodes from the same files (``pixel_array`` through
  ``apply_modality_lut``, slices sorted along the slice normal), holds one slice per input frame, and
  pydicom must be able to decode every file: medxai never invents or drops data.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.pixels import apply_modality_lut

__all__ = [
    "Element",
    "SeedInput",
    "Case",
    "Outcome",
    "MUTATORS",
    "OracleError",
    "element_index",
    "seed_inputs",
    "make_cases",
    "run_case",
    "pydicom_volume",
]

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ALL_VRS = (b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV").split()
_PIXEL_DATA = 0x7FE00010
_ITEM_TAG = {"<": b"\xfe\xff\x00\xe0", ">": b"\xff\xfe\xe0\x00"}


# --------------------------------------------------------------------------------------------------
# Where the elements are
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """One top-level data element of a file: byte offsets of its header, value and end."""

    tag: int
    start: int  # first byte of the tag
    value_start: int  # first byte of the value
    end: int  # one past the last byte (after the delimiters of an undefined-length value)
    explicit: bool  # the header holds a VR
    endian: str  # "<" or ">"
    in_meta: bool  # file meta information (group 0002)

    @property
    def length_field(self) -> tuple[int, int]:
        """(offset, size in bytes) of the length field."""
        if not self.explicit:
            return self.start + 4, 4
        if self.value_start - self.start == 12:
            return self.start + 8, 4
        return self.start + 6, 2


def element_index(data: bytes) -> list[Element]:
    """The top-level elements of a DICOM file (file meta, then data set), found by pydicom's reader."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no 'DICM' marker)")
    fp = io.BytesIO(data)
    fp.seek(132)
    out: list[Element] = []

    def walk(explicit: bool, endian: str, in_meta: bool) -> None:
        stop = (lambda tag, vr, length: tag >> 16 != 2) if in_meta else None
        start = fp.tell()
        for el in data_element_generator(fp, not explicit, endian == "<", stop_when=stop):
            end = fp.tell()
            head = 8
            if explicit and bytes(data[start + 4 : start + 6]) in _LONG_VRS:
                head = 12
            out.append(Element(int(el.tag), start, start + head, end, explicit, endian, in_meta))
            start = end

    walk(True, "<", True)
    ts = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    walk(not ts.is_implicit_VR, "<" if ts.is_little_endian else ">", False)
    return out


# --------------------------------------------------------------------------------------------------
# Seed inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedInput:
    """Unmutated input: one or more files (name, bytes) that medxai reads as one volume."""

    name: str
    files: tuple[tuple[str, bytes], ...]
    frames: int  # frames in all files: the slice count of an accepted volume
    weight: float = 1.0  # how often it is picked (large files less)


#: (file name shipped by pydicom / pydicom-data, pick weight).
PYDICOM_FILES: tuple[tuple[str, float], ...] = (
    ("CT_small.dcm", 3.0),  # Explicit VR LE, PixelPaddingValue: the fast header path
    ("MR_small.dcm", 1.0),
    ("MR_small_implicit.dcm", 2.0),  # Implicit VR LE: the fast path without VRs
    ("MR_small_bigendian.dcm", 1.0),  # big endian: pydicom's path
    ("MR_small_RLE.dcm", 2.0),  # RLE Lossless
    ("MR_small_jpeg_ls_lossless.dcm", 1.0),  # JPEG-LS (pylibjpeg)
    ("eCT_Supplemental.dcm", 0.3),  # Enhanced CT, 2 frames of 512x512 (1 MB, so picked rarely)
)


def seed_inputs(workdir: str | os.PathLike[str]) -> list[SeedInput]:
    """The unmutated inputs: pydicom's test files (those installed) and a 5-slice phantom series,
    uncompressed and RLE, written under ``workdir``."""
    from pydicom.data import get_testdata_file

    from dicom_io import StudyInfo, Volume, write_ct_series

    seeds: list[SeedInput] = []
    for name, weight in PYDICOM_FILES:
        p = get_testdata_file(name)
        if p is None:  # pydicom-data not installed: fewer seeds, same checks
            continue
        data = Path(p).read_bytes()
        frames = int(pydicom.dcmread(p, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
        seeds.append(SeedInput(name, ((name, data),), frames, weight))
    rng = np.random.default_rng(1234)
    z, y, x = np.meshgrid(np.arange(5), np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    hu = np.where(x**2 + y**2 < 0.8, 40.0, -1000.0) + 30.0 * z + np.rint(rng.normal(0, 10, z.shape))
    vol = Volume(hu.astype(np.float32), (0.8, 0.8, 2.5), (-6.0, -6.0, 40.0))
    for compression in ("none", "rle"):
        folder = Path(workdir) / f"phantom-{compression}"
        info = StudyInfo(uid_seed=f"fuzz-{compression}", study_date="20240101", study_time="120000")
        paths = write_ct_series(
            vol,
            folder,
            info,
            compression=compression,
            rescale=[(1.0, -1024.0), (1.0, -1024.0), (0.5, -1024.0), (1.0, -1000.0), (2.0, -1024.0)],
        )
        files = tuple((p.name, _fixed_clock(p.read_bytes())) for p in paths)
        seeds.append(SeedInput(f"phantom-5-slices-{compression}", files, 5, 3.0))
    return seeds


def _fixed_clock(data: bytes) -> bytes:
    """The file with its instance creation date/time (the writer's clock) fixed: same bytes every run."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20240101", "120000"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# Mutators: (file bytes, its elements, generator) -> (mutated bytes, what was done)
# --------------------------------------------------------------------------------------------------

Mutator = Callable[[bytes, list[Element], np.random.Generator], tuple[bytes, str]]


def _pixel(elements: list[Element]) -> Element | None:
    return next((e for e in elements if e.tag == _PIXEL_DATA), None)


def _header_end(data: bytes, elements: list[Element]) -> int:
    px = _pixel(elements)
    return px.value_start if px is not None else len(data)


def _pick(elements: Sequence[Element], rng: np.random.Generator) -> Element:
    return elements[int(rng.integers(len(elements)))]


def _put_uint(buf: bytearray, offset: int, size: int, value: int, endian: str) -> None:
    buf[offset : offset + size] = int(value % (1 << (8 * size))).to_bytes(size, "little" if endian == "<" else "big")


def flip_bytes(data: bytes, elements: list[Element], rng: np.random.Generator) -> tuple[bytes, str]:
    """XOR 1-4 bytes with random values: mostly in the header (after the preamble), else anywhere."""
    buf = bytearray(data)
    hi = _header_end(data, elements)
    where = []
    for _ in range(int(rng.integers(1, 5))):
        pos = int(rng.integers(128, hi)) if rng.random() < 0.85 else int(rng.integers(128, len(buf)))
        buf[pos] ^= int(rng.integers(1, 256))
        where.append(pos)
    return bytes(buf), f"flipped bytes at {where}"


def truncate(data: bytes, elements: list[Element], rng: np.random.Generator) -> tuple[bytes, str]:
    """Cut the file short: in the header or inside the pixel data."""
    hi = _header_end(data, elements)
    cut = int(rng.integers(0, hi)) if rng.random() < 0.5 else int(rng.integers(hi, len(data)))
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def change_vr(data: bytes, elements: list[Element], rng: np.random.Generator) -> tuple[bytes, str]:
    """Replace the VR of an explicit-VR element (meta elements always are) with another VR or garbage."""
    el = _pick([e for e in elements if e.explicit], rng)
    if rng.random() < 0.1:
        new = bytes(rng.integers(0, 256, 2, dtype=np.uint8))  # not a VR at all
    else:
        new = _ALL_VRS[int(rng.integers(len(_ALL_VRS)))]
    buf = bytearray(data)
    old = bytes(buf[el.start + 4 : el.start + 6])
    buf[el.start + 4 : el.start + 6] = new
    return bytes(buf), f"VR of ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) at {el.start}: {old!r} -> {new!r}"


def _new_length(old: int, size: int, rng: np.random.Generator) -> int:
    choice = int(rng.integers(6))
    if choice == 0:
        return max(0, old + int(rng.choice([-4, -2, -1, 1, 2, 4])))
    if choice == 1:
        return 0
    if choice == 2:
        return 2 * old + 2
    if choice == 3:
        return (1 << (8 * size)) - 1  # 0xFFFF, or 0xFFFFFFFF (undefined length)
    if choice == 4:
        return int(rng.integers(0, 1 << (8 * size)))
    return max(0, old - int(rng.integers(1, 64)))


def change_length(data: bytes, elements: list[Element], rng: np.random.Generator) -> tuple[bytes, str]:
    """Rewrite the length field of an element (off by a few bytes, zero, doubled, maximal, random)."""
    el = _pick(elements, rng)
    off, size = el.length_field
    endian = el.endian
    old = int.from_bytes(data[off : off + size], "little" if endian == "<" else "big")
    new = _new_length(old, size, rng)
    buf = bytearray(data)
    _put_uint(buf, off, size, new, endian)
    return bytes(buf), f"length of ({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) at {el.start}: {old} -> {new}"


def swap_tags(data: bytes, elements: list[Element], rng: np.random.Generator) -> tuple[bytes, str]:
    """Swap the tags of two elements of the same part (file meta, or data set); values stay put."""
    part = [e for e in elements if not e.in_meta] if rng.random() < 0.8 else [e for e in elements if e.in_meta]
    a, b = (part[int(i)] for i in rng.choice(len(part), 2, replace=False))
    buf = bytearray(data)
    ta, tb = bytes(buf[a.start : a.start + 4]), bytes(buf[b.start : b.start + 4])
    buf[a.start : a.start + 4], buf[b.start : b.start + 4] = tb, ta
    return bytes(buf), f"swapped tags ({a.tag:08X}) at {a.start} and ({b.tag:08X}) at {b.start}"


def duplicate_element(data: bytes, elements: list[Element], rng: np.random.Generator) -> tuple[bytes, str]:
    """Insert a copy of an element right after itself or at another element boundary."""
    el = _pick(elements, rng)
    at = el.end if rng.random() < 0.5 else _pick(elements, rng).start
    copy = data[el.start : el.end]
    return data[:at] + copy + data[at:], f"duplicated ({el.tag:08X}) ({len(copy)} bytes) at {at}"


def remove_element(data: bytes, elements: list[Element], rng: np.random.Generator) -> tuple[bytes, str]:
    """Delete one element (header and value)."""
    el = _pick(elements, rng)
    return data[: el.start] + data[el.end :], f"removed ({el.tag:08X}) at {el.start}"


def pixel_length(data: bytes, elements: list[Element], rng: np.random.Generator) -> tuple[bytes, str]:
    """Garbage in the pixel data's length field, or (encapsulated data) in a fragment item's length."""
    px = _pixel(elements)
    if px is None:
        return change_length(data, elements, rng)
    buf = bytearray(data)
    off, size = px.length_field
    endian = px.endian
    old = int.from_bytes(data[off : off + size], "little" if endian == "<" else "big")
    if old == 0xFFFFFFFF and rng.random() < 0.7:
        # Encapsulated: the basic offset table item or a fragment item (tag FFFE,E000 + 4-byte length).
        items = []
        pos = px.value_start
        item_tag = _ITEM_TAG[endian]
        while (pos := data.find(item_tag, pos, px.end)) >= 0:
            items.append(pos)
            pos += 4
        at = items[int(rng.integers(min(len(items), 3)))] if items else px.value_start
        old_item = int.from_bytes(data[at + 4 : at + 8], "little" if endian == "<" else "big")
        new = _new_length(old_item, 4, rng)
        _put_uint(buf, at + 4, 4, new, endian)
        return bytes(buf), f"pixel data item length at {at}: {old_item} -> {new}"
    choice = int(rng.integers(4))
    if choice == 0:
        new = old - int(rng.integers(1, 9))
    elif choice == 1:
        new = old + int(rng.integers(1, 9))
    elif choice == 2:
        new = 0xFFFFFFFF if size == 4 else 0xFFFF
    else:
        new = int(rng.integers(0, 1 << (8 * size)))
    _put_uint(buf, off, size, max(new, 0), endian)
    return bytes(buf), f"pixel data length at {off}: {old} -> {max(new, 0)}"


#: Name -> mutator. Each takes (bytes, elements, rng) and returns (mutated bytes, description).
MUTATORS: dict[str, Mutator] = {
    "flip_bytes": flip_bytes,
    "truncate": truncate,
    "change_vr": change_vr,
    "change_length": change_length,
    "swap_tags": swap_tags,
    "duplicate_element": duplicate_element,
    "remove_element": remove_element,
    "pixel_length": pixel_length,
}


@dataclass(frozen=True)
class Case:
    """One fuzz input: the seed's files with one of them mutated."""

    index: int
    seed: str
    mutator: str
    mutated_file: str
    description: str
    files: tuple[tuple[str, bytes], ...]
    frames: int  # slices an accepted volume must hold
    pass_folder: bool  # give ingest the folder (else the single file)

    def label(self) -> str:
        return f"case {self.index} [{self.seed} / {self.mutated_file} / {self.mutator}: {self.description}]"


def make_cases(seeds: Sequence[SeedInput], n: int, seed: int) -> list[Case]:
    """``n`` mutated inputs drawn deterministically from ``seeds`` with ``np.random.default_rng(seed)``;
    every mutator is used in turn so that each appears ``n / len(MUTATORS)`` times."""
    rng = np.random.default_rng(seed)
    weights = np.array([s.weight for s in seeds], dtype=float)
    weights /= weights.sum()
    index_cache: dict[bytes, list[Element]] = {}
    names = list(MUTATORS)
    cases: list[Case] = []
    for i in range(n):
        s = seeds[int(rng.choice(len(seeds), p=weights))]
        k = int(rng.integers(len(s.files)))
        fname, data = s.files[k]
        key = data[:4096] + len(data).to_bytes(8, "little")
        if key not in index_cache:
            index_cache[key] = element_index(data)
        mut = names[i % len(names)]
        mutated, what = MUTATORS[mut](data, index_cache[key], rng)
        files = tuple((f, mutated if j == k else d) for j, (f, d) in enumerate(s.files))
        single = len(s.files) == 1
        cases.append(Case(i, s.name, mut, fname, what, files, s.frames, not single or bool(rng.random() < 0.5)))
    return cases


# --------------------------------------------------------------------------------------------------
# The oracle: pydicom's own decode
# --------------------------------------------------------------------------------------------------


class OracleError(Exception):
    """pydicom cannot decode the files (so medxai must not accept them)."""


@dataclass
class OracleVolume:
    """pydicom's decode: values (z, y, x) float64 sorted along the slice normal, the voxels to compare
    (False where the stored value is the pixel padding value), and each slice's position (z, 3)."""

    values: np.ndarray
    valid: np.ndarray
    positions: np.ndarray


def _dcmread(path: str) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)  # no preamble: medxai reads such raw data sets too
        # A raw data set has no file meta; pydicom's documented remedy is to state the transfer syntax
        # it was read with (native pixels: nothing could say how they were compressed).
        if "TransferSyntaxUID" not in ds.file_meta and ds.original_encoding[1]:
            ds.file_meta.TransferSyntaxUID = (
                pydicom.uid.ImplicitVRLittleEndian if ds.original_encoding[0] else pydicom.uid.ExplicitVRLittleEndian
            )
        return ds


def _floats(value: object, n: int) -> np.ndarray:
    arr = np.asarray([float(v) for v in value], dtype=float)  # type: ignore[union-attr]
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise OracleError(f"expected {n} finite numbers, got {value!r}")
    return arr


def _padding_mask(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """True where a stored value may be padding (PixelPaddingValue, or the range up to
    PixelPaddingRangeLimit, either sign of its 16-bit pattern): those voxels are not compared, as medxai
    replaces padding by air. A padding value that is not one integer masks nothing."""
    none = np.zeros(stored.shape, bool)
    try:
        pad = int(ds.PixelPaddingValue) if "PixelPaddingValue" in ds else None
        limit = int(ds.PixelPaddingRangeLimit) if "PixelPaddingRangeLimit" in ds else None
    except (TypeError, ValueError):
        return none
    if pad is None:
        return none
    bounds = [pad] if limit is None else [pad, limit]
    mask = none
    for signed in (False, True):  # US or SS: the same bit pattern read both ways
        vals = [(v - 0x10000 if v >= 0x8000 else v) if signed else (v + 0x10000 if v < 0 else v) for v in bounds]
        lo, hi = min(vals), max(vals)
        mask = mask | ((stored >= lo) & (stored <= hi))
    return mask


def pydicom_volume(paths: Sequence[str]) -> OracleVolume:
    """Decode ``paths`` with pydicom alone: ``pixel_array`` through ``apply_modality_lut`` (per frame for
    Enhanced objects), slices sorted along the normal of the first file's orientation.

    Raises
    ------
    OracleError
        pydicom cannot read a file, decode its pixels, apply its rescale or place its slices.
    """
    slices: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # values, valid, position, iop
    try:
        for p in paths:
            ds = _dcmread(p)
            if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
                raise OracleError("not a grayscale image")
            stored = np.asarray(ds.pixel_array)
            n = int(ds.get("NumberOfFrames", 1) or 1)
            stored = stored.reshape(n, int(ds.Rows), int(ds.Columns))
            pad = _padding_mask(stored, ds)
            pfg = ds.get("PerFrameFunctionalGroupsSequence")
            sfg = ds.get("SharedFunctionalGroupsSequence")
            for i in range(n):
                if pfg is not None or sfg is not None:

                    def group(seq: str, pfg: object = pfg, sfg: object = sfg, i: int = i) -> Dataset | None:
                        for owner in ((pfg[i] if pfg is not None else None), (sfg[0] if sfg else None)):
                            if owner is not None and owner.get(seq):
                                return owner.get(seq)[0]
                        return None

                    pos, ori, pvt = (
                        group("PlanePositionSequence"),
                        group("PlaneOrientationSequence"),
                        group("PixelValueTransformationSequence"),
                    )
                    if pos is None or ori is None:
                        raise OracleError("frame without plane position / orientation")
                    rescale = pvt if pvt is not None else ds
                    ipp, iop = pos.ImagePositionPatient, ori.ImageOrientationPatient
                else:
                    rescale, ipp, iop = ds, ds.ImagePositionPatient, ds.ImageOrientationPatient
                values = np.asarray(apply_modality_lut(stored[i], rescale), dtype=np.float64)
                slices.append((values, ~pad[i], _floats(ipp, 3), _floats(iop, 6)))
    except OracleError:
        raise
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit, _Hang)):
            raise
        # (includes pyo3's PanicException, a BaseException, from a Rust decoder on damaged data)
        raise OracleError(f"{type(e).__name__}: {e}") from e
    if not slices:
        raise OracleError("no frames")
    iop = slices[0][3]
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort([float(np.dot(s[2], normal)) for s in slices], kind="stable")
    return OracleVolume(
        np.stack([slices[i][0] for i in order]),
        np.stack([slices[i][1] for i in order]),
        np.stack([slices[i][2] for i in order]),
    )


# --------------------------------------------------------------------------------------------------
# Running one case
# --------------------------------------------------------------------------------------------------


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so that the CLI's ``except Exception`` does not catch it."""


@dataclass
class Outcome:
    """What happened to one case. ``failure`` is None when the outcome is acceptable."""

    case: Case
    exit_code: int | None
    seconds: float
    failure: str | None = None  # kind: uncaught, exit-N, traceback, hang, accepted-undecodable, slices, values, ...
    detail: str = ""
    output: str = field(default="", repr=False)

    @property
    def accepted(self) -> bool:
        return self.exit_code == 0 and self.failure is None

    def describe(self) -> str:
        return f"{self.case.label()}: {self.failure} (exit {self.exit_code}, {self.seconds:.2f} s) {self.detail}"


@contextlib.contextmanager
def _time_limit(seconds: float):  # type: ignore[no-untyped-def]
    """Interrupt the block with `_Hang` after ``seconds`` (SIGALRM; main thread only)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise _Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check_accepted(case: Case, files: list[str], out: Path) -> tuple[str | None, str]:
    import nrrd

    if not out.exists():
        return "no-output", f"exit 0 but {out.name} was not written"
    try:
        oracle = pydicom_volume(files)
    except OracleError as e:
        return "accepted-undecodable", f"medxai accepted files pydicom cannot decode ({e})"
    arr, header = nrrd.read(str(out), index_order="C")  # (z, y, x)
    if arr.shape[0] != case.frames:
        return "slices", f"volume has {arr.shape[0]} slice(s) where the input holds {case.frames} frame(s)"
    if arr.shape != oracle.values.shape:
        return "shape", f"volume shape {arr.shape}, pydicom decodes {oracle.values.shape}"
    a = arr.astype(np.float64)[oracle.valid]
    b = oracle.values[oracle.valid]
    # float32 output: allow its rounding, relative to the magnitudes involved.
    tol = 1e-6 * (np.abs(b) + 1.0) * 4
    bad = ~(np.abs(a - b) <= tol)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        return "values", f"{int(bad.sum())} voxel(s) differ from pydicom's decode (first: {a[k]} vs {b[k]})"
    origin = np.asarray(header["space origin"], dtype=float)
    if not np.allclose(origin, oracle.positions[0], atol=1e-3):
        return "origin", f"volume origin {origin.tolist()} but the first slice is at {oracle.positions[0].tolist()}"
    return None, ""


def run_case(case: Case, workdir: str | os.PathLike[str], time_limit_s: float = 10.0) -> Outcome:
    """Write the case's files under ``workdir``, run ``medxai ingest`` on them in process and judge it."""
    from dicom_io import DicomIOError, read_image
    from pipelines.cli import main

    root = Path(workdir) / f"case{case.index:05d}"
    shutil.rmtree(root, ignore_errors=True)
    folder = root / "in"
    folder.mkdir(parents=True)
    paths = []
    for name, data in case.files:
        (folder / name).write_bytes(data)
        paths.append(str(folder / name))
    out = root / "out.nrrd"
    source = folder if case.pass_folder else Path(paths[0])
    buf = io.StringIO()
    code: int | None = None
    failure: str | None = None
    detail = ""
    t0 = time.perf_counter()
    direct: BaseException | None = None
    try:
        with _time_limit(time_limit_s), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main(["ingest", str(source), "-o", str(out)])
            # The CLI maps any ValueError/TypeError/KeyError to exit 2; reading directly shows whether the
            # reader itself raised its own error type (one that names the file) or leaked another one.
            try:
                read_image(source)
            except DicomIOError:
                pass
            except Exception as e:  # noqa: BLE001
                direct = e
    except _Hang as e:
        failure, detail = "hang", str(e)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        failure, detail = "uncaught", f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    text = buf.getvalue()
    if failure is None and seconds > time_limit_s:
        failure, detail = "hang", f"took {seconds:.1f} s"
    if failure is None and code not in (0, 2):
        failure, detail = f"exit-{code}", text.strip()[-400:]
    if failure is None and "Traceback" in text:
        failure, detail = "traceback", text.strip()[-400:]
    if failure is None and direct is not None:
        failure, detail = "exception-type", f"read_image raised {type(direct).__name__}: {direct}"[:400]
    if failure is None and code == 0:
        failure, detail = _check_accepted(case, paths, out)
    outcome = Outcome(case, code, seconds, failure, detail, text)
    shutil.rmtree(root, ignore_errors=True)
    return outcome

"""A lean scanner for the attributes a volume needs, from uncompressed little-endian DICOM files.

Why this exists: pydicom parses and converts every element (about 1 ms per CT file in Python), which
alone costs more than SimpleITK's whole read of a 200-slice series. A volume needs a dozen
attributes and the offset of the pixel data, so for the common case (Explicit or Implicit VR Little
Endian, single frame, native pixels) this module walks the element stream with ``struct`` and
collects just those. Anything else (compression, big endian, multi-frame, a missing attribute)
returns None and the caller uses pydicom.

Text attributes (SeriesDescription) are decoded as pydicom decodes them, with the object's
SpecificCharacterSet (read first; ISO_IR 6 / latin-1 only when it is absent), so a listing never
shows mojibake; showing such text to a user still goes through `dicom_io.text.printable`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from pydicom.charset import convert_encodings
from pydicom.values import convert_text

__all__ = ["FastHeader", "scan_header", "WANTED"]

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# Every VR of PS3.5 (explicit VR files): anything else means a damaged header, which pydicom judges.
_KNOWN_VRS = _LONG_VRS | {
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FL",
    b"FD",
    b"IS",
    b"LO",
    b"LT",
    b"PN",
    b"SH",
    b"SL",
    b"SS",
    b"ST",
    b"TM",
    b"UI",
    b"UL",
    b"US",
}
# VRs a WANTED attribute may have, by kind; another VR (a swapped tag, a damaged header) goes to pydicom.
_KIND_VRS = {
    "str": {b"UI", b"CS", b"IS", b"SH", b"LO"},
    "text": {b"LO", b"SH", b"ST", b"LT", b"UT", b"UC"},
    "us": {b"US", b"SS"},
    "ds": {b"DS"},
    "seq": {b"SQ"},
}
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD

#: tag -> (keyword, kind) with kind "str" (ASCII: UIDs, codes, numbers), "text" (decoded with the
#: SpecificCharacterSet), "us" (unsigned short; US-or-SS values are kept as their 16-bit pattern and
#: given their sign by the reader from PixelRepresentation) or "ds" (decimal strings).
WANTED: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "str"),
    0x00080016: ("SOPClassUID", "str"),
    0x00080018: ("SOPInstanceUID", "str"),
    0x00080060: ("Modality", "str"),
    0x0008103E: ("SeriesDescription", "text"),
    0x00200011: ("SeriesNumber", "str"),
    0x0020000D: ("StudyInstanceUID", "str"),
    0x0020000E: ("SeriesInstanceUID", "str"),
    0x00200052: ("FrameOfReferenceUID", "str"),
    0x00200032: ("ImagePositionPatient", "ds"),
    0x00200037: ("ImageOrientationPatient", "ds"),
    0x00280002: ("SamplesPerPixel", "us"),
    0x00280004: ("PhotometricInterpretation", "str"),
    0x00280008: ("NumberOfFrames", "str"),
    0x00280010: ("Rows", "us"),
    0x00280011: ("Columns", "us"),
    0x00280030: ("PixelSpacing", "ds"),
    0x00280100: ("BitsAllocated", "us"),
    0x00280101: ("BitsStored", "us"),
    0x00280103: ("PixelRepresentation", "us"),
    0x00280120: ("PixelPaddingValue", "us"),
    0x00280121: ("PixelPaddingRangeLimit", "us"),
    0x00281052: ("RescaleIntercept", "ds"),
    0x00281053: ("RescaleSlope", "ds"),
    0x52009229: ("SharedFunctionalGroupsSequence", "seq"),
}
_REQUIRED = (
    "SOPInstanceUID",
    "SOPClassUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
)
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from
_tag = struct.Struct("<HH").unpack_from


@dataclass
class FastHeader:
    """What the scanner found: attribute values (keyword -> value) and where the pixels are."""

    values: dict[str, object]
    pixel_offset: int
    pixel_length: int  # bytes present in the file after the offset, capped at the stated length
    stated_length: int


class _Unsupported(Exception):
    pass


def _skip_undefined(data: bytes, pos: int, explicit: bool) -> int:
    """Skip the items of an undefined-length sequence starting at ``pos``; return the position after it."""
    n = len(data)
    while pos + 8 <= n:
        g, e = _tag(data, pos)
        tag = (g << 16) | e
        length = _u32(data, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unsupported
        if length == _UNDEFINED:
            pos = _walk(data, pos, explicit, None, stop_at_item_end=True)
        else:
            pos += length
    raise _Unsupported  # ran off the end: truncated


def _walk(data: bytes, pos: int, explicit: bool, out: dict[str, object] | None, stop_at_item_end: bool = False) -> int:
    """Walk elements from ``pos``; collect WANTED into ``out`` (top level only). Returns the stop position
    (the start of PixelData at the top level, or just after an item delimiter inside a sequence)."""
    n = len(data)
    while pos + 8 <= n:
        g, e = _tag(data, pos)
        tag = (g << 16) | e
        if tag == _ITEM_END:
            return pos + 8
        if out is not None and tag == _PIXEL_DATA:
            return pos
        if explicit and g != 0xFFFE:
            vr = data[pos + 4 : pos + 6]
            if vr not in _KNOWN_VRS:
                raise _Unsupported
            if vr in _LONG_VRS:
                length = _u32(data, pos + 8)[0]
                head = 12
            else:
                length = _u16(data, pos + 6)[0]
                head = 8
        else:
            vr = b""
            length = _u32(data, pos + 4)[0]
            head = 8
        pos += head
        if length == _UNDEFINED:
            if out is not None and tag in WANTED and WANTED[tag][1] == "seq":
                out[WANTED[tag][0]] = True
            pos = _skip_undefined(data, pos, explicit)
            continue
        if out is not None and tag in WANTED:
            key, kind = WANTED[tag]
            if (explicit and vr not in _KIND_VRS[kind]) or (kind == "us" and length != 2):
                raise _Unsupported  # not the VR / size this attribute has: let pydicom judge the file
            raw = data[pos : pos + length]
            if kind == "us":
                out[key] = _u16(raw, 0)[0]
            elif kind == "seq":
                out[key] = True
            elif kind == "text":
                out[key] = raw  # decoded once the SpecificCharacterSet is known (scan_header)
            else:
                text = raw.decode("latin-1").strip(" \x00")
                out[key] = [float(v) for v in text.split("\\")] if kind == "ds" and text else text
        pos += length
    if stop_at_item_end:
        raise _Unsupported
    return pos


@lru_cache(maxsize=64)
def _encodings(specific_character_set: str) -> tuple[str, ...]:
    """Python codecs for a SpecificCharacterSet value (pydicom's mapping; cached: series share one)."""
    terms = [t.strip() for t in specific_character_set.split("\\")] if specific_character_set else []
    return tuple(convert_encodings(terms or None))


def _decode_text(values: dict[str, object]) -> None:
    """Decode the "text" attributes in place, as pydicom does, with the object's character set."""
    encodings = list(_encodings(str(values.get("SpecificCharacterSet") or "")))
    for key, kind in WANTED.values():
        raw = values.get(key)
        if kind == "text" and isinstance(raw, bytes):
            values[key] = convert_text(raw, encodings)


def scan_header(data: bytes) -> FastHeader | None:
    """Scan a whole file's bytes. Returns None where pydicom must take over (see module docstring)."""
    try:
        if len(data) < 144 or data[128:132] != b"DICM":
            return None
        # File meta (group 0002) is always Explicit VR Little Endian.
        pos = 132
        ts = None
        n = len(data)
        while pos + 8 <= n and _tag(data, pos)[0] == 0x0002:
            g, e = _tag(data, pos)
            vr = data[pos + 4 : pos + 6]
            if vr not in _KNOWN_VRS:
                return None
            if vr in _LONG_VRS:
                length, head = _u32(data, pos + 8)[0], 12
            else:
                length, head = _u16(data, pos + 6)[0], 8
            if e == 0x0010:
                if vr != b"UI":
                    return None  # pydicom judges a transfer syntax that is not a UID
                ts = data[pos + head : pos + head + length].decode("ascii").strip(" \x00")
            pos += head + length
        if ts not in (_EXPLICIT_LE, _IMPLICIT_LE):
            return None
        values: dict[str, object] = {"TransferSyntaxUID": ts}
        pix = _walk(data, pos, ts == _EXPLICIT_LE, values)
        if pix + 8 > n or _tag(data, pix) != (0x7FE0, 0x0010):
            return None  # no pixel data found: let pydicom report what the file is
        if ts == _EXPLICIT_LE:
            if data[pix + 4 : pix + 6] not in (b"OB", b"OW"):
                return None  # a tag moved onto another element: pydicom judges it
            stated, head = _u32(data, pix + 8)[0], 12
        else:
            stated, head = _u32(data, pix + 4)[0], 8
        if stated == _UNDEFINED:
            return None  # encapsulated
        _decode_text(values)
    except (_Unsupported, struct.error, UnicodeDecodeError, LookupError, ValueError):
        return None
    if any(values.get(k) is None for k in _REQUIRED) or values.get("SharedFunctionalGroupsSequence"):
        return None
    if str(values.get("NumberOfFrames", "1") or "1") not in ("1", "") or values.get("SamplesPerPixel", 1) != 1:
        return None
    offset = pix + head
    end = offset + stated
    if end < n and (n - end < 4 or _tag(data, end) != (0xFFFC, 0xFFFC)):
        return None  # elements after the pixel data (only trailing padding is usual): pydicom reads them all
    return FastHeader(values, offset, min(stated, n - offset), stated)

"""The elements of the usual DICOM file, read without pydicom's element reader.

The usual file (preamble, a file meta group, a little endian dataset, Pixel
Data last) is a flat run of elements: this walks it with one `struct` call per
element and keeps only the wanted ones, as the `RawDataElement`s pydicom's
`read_dataset` makes of the same bytes, a third of its time. Anything else (a
wanted sequence, an undefined length that is not a run of items, a value
outside the file, an unknown VR, tags out of order, Pixel Data not last) is
`None`: pydicom reads that file. The corpus test compares the two on every
file of pydicom's test data.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
_PIXEL_GROUP = 0x7FE00008  # Float Pixel Data: the first of the pixel elements
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_IMPLICIT = struct.Struct("<HHL").unpack_from
_LONG = struct.Struct("<L").unpack_from
_GROUP = struct.Struct("<H").unpack_from
_VR_NAMES = {vr.value.encode(): vr.value for vr in STANDARD_VR}
_LONG_VRS = {code for code, name in _VR_NAMES.items() if name in EXPLICIT_VR_LENGTH_32}


class _Unusual(Exception):
    """Not the usual file: pydicom reads it."""


@dataclass(frozen=True)
class Elements:
    """The file meta group (all of it), the wanted dataset elements, and where
    the Pixel Data element starts."""

    meta: dict[BaseTag, RawDataElement]
    dataset: dict[BaseTag, RawDataElement]
    pixel_offset: int
    transfer_syntax: str


def usual_elements(
    data: bytes,
    wanted: frozenset[int],
    implicit_of: Callable[[str], bool | None],
    max_value: int,
) -> Elements | None:
    """The usual file's elements, or None. `implicit_of` says whether a transfer
    syntax is read here (implicit VR: True, explicit: False; None: not read
    here); a wanted value longer than `max_value` bytes is left to pydicom."""
    try:
        return _read(data, wanted, implicit_of, max_value)
    except (_Unusual, struct.error, RecursionError, UnicodeDecodeError):
        return None


def _read(data, wanted, implicit_of, max_value) -> Elements | None:
    if data[128:132] != b"DICM":
        return None
    meta: dict[BaseTag, RawDataElement] = {}
    pos, last = 132, -1
    while _GROUP(data, pos)[0] == 0x0002:
        tag, vr, length, start = _header(data, pos, False)
        if length == UNDEFINED_LENGTH or tag <= last:
            raise _Unusual
        meta[BaseTag(tag)] = _element(data, tag, vr, length, start, False)
        pos, last = start + length, tag
    syntax = meta.get(0x00020010)
    value = syntax.value if syntax is not None else None
    if not isinstance(value, bytes) or not value.isascii():
        return None
    ts = value.decode("ascii").strip(" \x00")
    implicit = implicit_of(ts)
    if implicit is None:
        return None
    if implicit and b"AA" <= data[pos + 4 : pos + 6] <= b"ZZ":
        return None  # looks explicit: pydicom guesses which it is
    dataset: dict[BaseTag, RawDataElement] = {}
    last = -1
    while True:
        tag, vr, length, start = _header(data, pos, implicit)
        if tag <= last:
            raise _Unusual
        if tag >= _PIXEL_GROUP:
            break
        if length == UNDEFINED_LENGTH:
            if tag in wanted:
                raise _Unusual  # a sequence ingest reads: pydicom parses it
            pos = _skip_items(data, start, implicit or vr == "UN")
        else:
            if tag in wanted:
                if vr == "SQ" or length > max_value:
                    raise _Unusual
                dataset[BaseTag(tag)] = _element(data, tag, vr, length, start, implicit)
            pos = start + length
        last = tag
    if tag != PIXEL_DATA or not dataset:
        return None
    if length != UNDEFINED_LENGTH and start + length != len(data):
        return None  # cut short, or more after Pixel Data
    if any(elem.value is None for elem in dataset.values()):
        return None  # an empty binary value: as the pydicom path does
    return Elements(meta, dataset, pos, ts)


def _header(data: bytes, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
    """(tag, VR, length, where the value starts) of the element at `pos`."""
    if implicit:
        group, elem, length = _IMPLICIT(data, pos)
        return group << 16 | elem, None, length, pos + 8
    group, elem, code, length = _EXPLICIT(data, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item and delimiter tags carry no VR
        return tag, None, _LONG(data, pos + 4)[0], pos + 8
    vr = _VR_NAMES.get(code)
    if vr is None:
        raise _Unusual
    if code in _LONG_VRS:
        return tag, vr, _LONG(data, pos + 8)[0], pos + 12
    return tag, vr, length, pos + 8


def _element(data, tag, vr, length, start, implicit) -> RawDataElement:
    end = start + length
    if end > len(data):
        raise _Unusual
    value = data[start:end] if length else empty_value_for_VR(vr, raw=True)
    return RawDataElement(BaseTag(tag), vr, length, value, start, implicit, True)


def _skip_items(data: bytes, pos: int, implicit: bool) -> int:
    """Past an undefined-length value made of items (a sequence, or fragments)
    up to its sequence delimiter."""
    while True:
        group, elem, length = _IMPLICIT(data, pos)
        tag, pos = group << 16 | elem, pos + 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Unusual
        if length != UNDEFINED_LENGTH:
            pos += length
            continue
        while True:  # an item of undefined length: elements up to its end
            tag, vr, length, start = _header(data, pos, implicit)
            if tag == _ITEM_END:
                pos = start
                break
            if length == UNDEFINED_LENGTH:
                pos = _skip_items(data, start, implicit or vr == "UN")
            else:
                pos = start + length

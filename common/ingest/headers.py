"""Parse one file's DICOM header: the fast reader of the usual files, pydicom's
for the rest, and the `Header` ingest keeps of it (`header_fields.py` fills it).

The summary (`Header`) is plain data: it is cached as JSON per file content, so a
re-run decides which files to use without opening them again.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset as read_elements
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from common.ingest.elements import usual_elements
from common.ingest.reasons import Skip, short_error

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
PIXEL_TAG_BIG = b"\x7f\xe0\x00\x10"
UNDEFINED_LENGTH = 0xFFFFFFFF
# Extensions that say "I am DICOM": such a file that is not is an error, whereas
# a README or a viewer program on an export CD is only excluded.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
# Every top-level element that `summarize` and `common.ingest.pixels` read: the
# usual file is parsed for these only (pydicom adds SpecificCharacterSet).
HEADER_TAGS = (
    0x00080008,  # ImageType
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x00080060,  # Modality
    0x0008103E,  # SeriesDescription
    0x00100020,  # PatientID
    0x00180050,  # SliceThickness
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00200011,  # SeriesNumber
    0x00200013,  # InstanceNumber
    0x00200032,  # ImagePositionPatient
    0x00200037,  # ImageOrientationPatient
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00280103,  # PixelRepresentation
    0x00280120,  # PixelPaddingValue
    0x00280121,  # PixelPaddingRangeLimit
    0x00281052,  # RescaleIntercept
    0x00281053,  # RescaleSlope
    0x00281054,  # RescaleType
    0x00283000,  # ModalityLUTSequence
    0x52009229,  # SharedFunctionalGroupsSequence
    0x52009230,  # PerFrameFunctionalGroupsSequence
)


@dataclass(frozen=True)
class Header:
    """What ingest uses from a DICOM header (JSON-serialisable)."""

    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    sop_class: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    image_type: tuple[str, ...] = ()
    rescale_type: str = ""
    has_rescale: bool = False
    has_modality_lut: bool = False
    rows: int = 0
    columns: int = 0
    frames: int = 1
    samples: int = 1
    bits_allocated: int = 0
    photometric: str = ""
    transfer_syntax: str = ""
    has_pixels: bool = False
    pixel_bytes: int = -1  # length of native Pixel Data; -1 when encapsulated
    orientation: tuple[float, ...] | None = None
    positions: tuple[tuple[float, ...], ...] | None = None  # one per frame
    instance_number: int | None = None
    slice_thickness: float | None = None
    referenced_files: tuple[tuple[str, ...], ...] = ()  # DICOMDIR only

    @property
    def is_dicomdir(self) -> bool:
        return self.sop_class == DICOMDIR_SOP_CLASS

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every value, 5x slower here.
        return {name: getattr(self, name) for name in _HEADER_FIELDS}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Header:
        values = dict(data)
        for name in ("image_type", "orientation"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if values.get("positions") is not None:
            values["positions"] = tuple(tuple(p) for p in values["positions"])
        values["referenced_files"] = tuple(
            tuple(ref) for ref in values.get("referenced_files", ())
        )
        return cls(**values)


_HEADER_FIELDS = tuple(f.name for f in dataclasses.fields(Header))


@dataclass
class Parsed:
    """A parsed file: its header, and where its Pixel Data is.

    The header is parsed without Pixel Data. For native little-endian files
    the pixels are then a zero-copy view of the file's bytes (pydicom would copy
    them, ~15% of a slice's time); compressed ones are parsed again by `full()`
    only if they are decoded, so excluded files never pay for it.
    """

    ds: Dataset
    data: bytes
    name: str
    pixels: memoryview | None = None  # native Pixel Data value (may be short)
    has_pixel_element: bool = False
    stored_range: tuple[int, int] | None = None  # (min, max), once measured
    meta: Dataset | None = None  # the file meta group; else ds.file_meta

    def full(self) -> Dataset:
        """The dataset with its Pixel Data, for pydicom's decoders."""
        if self.has_pixel_element and "PixelData" not in self.ds:
            self.ds = _dcmread(BytesIO(self.data), self.data, self.name, False)
        return self.ds


def read_dataset(data: bytes, name: str) -> Parsed:
    """Parse a file held in memory; `Skip` says why it is not DICOM.

    pydicom's warnings about vendor quirks it repairs are silenced by the caller
    (`quiet_pydicom`): the report is the place for problems, not stderr.
    """
    if not data:
        raise Skip("empty", "empty file (0 bytes); copy it again from the PACS export")
    parsed = _read_usual(data, name)
    if parsed is not None:
        return parsed
    return read_complete(data, name)


def read_complete(data: bytes, name: str) -> Parsed:
    """`read_dataset` through `pydicom.dcmread`: every header element is read."""
    if not data:
        raise Skip("empty", "empty file (0 bytes); copy it again from the PACS export")
    stream = BytesIO(data)
    ds = _dcmread(stream, data, name, stop_before_pixels=True)
    _check_not_truncated(ds, len(data))
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts == DEFLATED or not ts:
        # Deflated: the file's bytes are not the dataset's. No meta: pydicom
        # guessed the encoding. Either way, let pydicom read everything.
        ds = _dcmread(BytesIO(data), data, name, stop_before_pixels=False)
        return Parsed(ds, data, name, None, "PixelData" in ds)
    offset = stream.tell()
    tag = data[offset : offset + 4]
    if tag not in (PIXEL_TAG, PIXEL_TAG_BIG):
        return Parsed(ds, data, name)
    return Parsed(ds, data, name, _native_pixels(ts, data, offset), True)


def _read_usual(data: bytes, name: str) -> Parsed | None:
    """The usual file, read with pydicom's element reader (`read_dataset`) only
    for `HEADER_TAGS`, up to its Pixel Data: half the time of `dcmread`, whose
    other work (every element, the command set, a `FileDataset`) ingest does
    not use. None for anything else (no preamble, a meta group without a plain
    transfer syntax, no Pixel Data, an error): `read_complete` then reads it,
    and says what is wrong with it.
    """
    if data[128:132] != b"DICM":
        return None
    fast = usual_elements(data, _FAST_TAGS, _usual_syntax, _DEFER_BYTES)
    if fast is not None:
        return Parsed(
            _dataset(fast.dataset, implicit=_usual_syntax(fast.transfer_syntax)),
            data,
            name,
            _native_pixels(fast.transfer_syntax, data, fast.pixel_offset),
            True,
            meta=_dataset(fast.meta, implicit=False),
        )
    stream = BytesIO(data)
    stream.seek(132)
    try:
        meta = read_elements(stream, False, True, stop_when=_after_meta)
        ts = _raw_uid(meta.get_item(0x00020010))
        implicit = _usual_syntax(ts)
        if implicit is None:
            return None
        if ts in (EXPLICIT_LE, IMPLICIT_LE):
            ds, offset = _read_native(stream, implicit)
        else:  # encapsulated Pixel Data: stop before it
            ds = read_elements(
                stream,
                implicit,
                True,
                stop_when=_at_pixel_data,
                specific_tags=list(HEADER_TAGS),
            )
            offset = stream.tell()
        if offset is None or data[offset : offset + 4] != PIXEL_TAG or not ds._dict:
            return None
    except Exception:
        return None
    pixels = _native_pixels(ts, data, offset)
    return Parsed(ds, data, name, pixels, True, meta=meta)


def _read_native(stream: BytesIO, implicit: bool) -> tuple[Dataset, int | None]:
    """The header of a native (uncompressed) file, and where its Pixel Data
    element starts (None: not the usual file).

    The reader skips Pixel Data without reading it (`defer_size`), which spares
    a callback per element that `stop_when` costs; anything unusual (another
    pixel element, a deferred header element) is left to `read_complete`.
    """
    ds = read_elements(
        stream,
        implicit,
        True,
        defer_size=_DEFER_BYTES,
        specific_tags=_NATIVE_TAGS,
    )
    elements = ds._dict
    pixel = elements.pop(0x7FE00010, None)
    if (
        not isinstance(pixel, RawDataElement)
        or 0x7FE00008 in elements
        or 0x7FE00009 in elements
        or any(getattr(elem, "value", 0) is None for elem in elements.values())
    ):
        return ds, None
    long_header = not pixel.is_implicit_VR and pixel.VR in EXPLICIT_VR_LENGTH_32
    return ds, pixel.value_tell - (12 if long_header else 8)


# Pixel Data longer than this stays in the file's bytes (not copied by pydicom).
_DEFER_BYTES = 1 << 16
_NATIVE_TAGS = [*HEADER_TAGS, 0x7FE00008, 0x7FE00009, 0x7FE00010]
_FAST_TAGS = frozenset((*HEADER_TAGS, 0x00080005))  # pydicom adds the charset


def _dataset(elements: dict, implicit: bool) -> Dataset:
    """A Dataset of raw elements, as pydicom's `read_dataset` makes it."""
    ds = Dataset(elements)
    charset = elements.get(0x00080005)
    encoding = (
        convert_encodings(convert_raw_data_element(charset).value)
        if charset is not None
        else default_encoding
    )
    ds.set_original_encoding(implicit, True, encoding)
    return ds


def _after_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0002


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    """Where `dcmread(stop_before_pixels=True)` stops."""
    return tag in _PIXEL_TAGS  # a set: pydicom's tags compare slowly with ==


_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00009, 0x7FE00008))


def _raw_uid(elem) -> str:
    value = None if elem is None else elem.value
    if isinstance(value, bytes) and value.isascii():
        return value.decode("ascii").strip(" \x00")
    return ""


@functools.lru_cache(maxsize=64)
def _usual_syntax(ts: str) -> bool | None:
    """Implicit VR (True) or explicit VR little endian (False) datasets of the
    standard syntaxes, as `dcmread` reads them; None for the others."""
    if ts == IMPLICIT_LE:
        return True
    if ts == EXPLICIT_LE:
        return False
    try:
        uid = UID(ts)
        usual = (
            uid.is_transfer_syntax
            and uid.is_compressed
            and not uid.is_deflated
            and uid.is_little_endian
            and not uid.is_implicit_VR
        )
    except ValueError:
        return None
    return False if usual else None


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings for a batch of files (costly per file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _dcmread(stream: BytesIO, data: bytes, name: str, stop_before_pixels: bool):
    try:
        return pydicom.dcmread(stream, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        if not _starts_like_dataset(data):
            code = "bad-dicom" if name.lower().endswith(DICOM_SUFFIXES) else None
            raise Skip(
                code or "not-dicom",
                "not a DICOM file (no 'DICM' marker and no DICOM header)",
            ) from None
        try:  # a bare dataset without the file meta header (old exports)
            stream.seek(0)
            return pydicom.dcmread(
                stream, force=True, stop_before_pixels=stop_before_pixels
            )
        except Exception as err:
            raise Skip(
                "corrupt-header", f"DICOM header cannot be read ({short_error(err)})"
            ) from None
    except Exception as err:
        raise Skip(
            "corrupt-header", f"DICOM header cannot be read ({short_error(err)})"
        ) from None


def _native_pixels(ts: str, data: bytes, offset: int) -> memoryview | None:
    """The native Pixel Data value whose element starts at `offset`.

    pydicom stopped right before the element; its header is 12 bytes in
    explicit VR (tag, VR, reserved, 32-bit length) and 8 in implicit VR.
    """
    if ts not in (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE):
        return None  # compressed
    order = "big" if ts == EXPLICIT_BE else "little"
    if ts == IMPLICIT_LE:
        start = offset + 8
    elif data[offset + 4 : offset + 6] in (b"OW", b"OB", b"UN"):
        start = offset + 12
    else:
        return None
    length = int.from_bytes(data[start - 4 : start], order)
    if length == UNDEFINED_LENGTH:
        return None  # encapsulated although the syntax says native: pydicom decides
    return memoryview(data)[start : start + length]


def _check_not_truncated(ds: Dataset, size: int) -> None:
    """A file cut short mid-element parses without error; its last value is short."""
    tags = list(ds.keys())
    if not tags:
        raise Skip(
            "truncated",
            f"the file ends after {size} bytes, before any DICOM data element; "
            "copy it again from the PACS export",
        )
    last = ds.get_item(tags[-1])
    length = getattr(last, "length", UNDEFINED_LENGTH)
    value = getattr(last, "value", None)
    if length != UNDEFINED_LENGTH and isinstance(value, bytes) and len(value) < length:
        raise Skip(
            "truncated",
            f"the file is truncated: element {last.tag} should hold {length} bytes "
            f"but the file ends after {len(value)}; copy it again from the PACS "
            "export",
        )


def _starts_like_dataset(data: bytes) -> bool:
    """A bare dataset starts with a group 0x0002 or 0x0008 tag (either endian)."""
    return len(data) >= 8 and data[:2] in (
        b"\x02\x00",
        b"\x08\x00",
        b"\x00\x02",
        b"\x00\x08",
    )

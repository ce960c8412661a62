"""Summarise a parsed DICOM header into the `Header` ingest needs: the values it
reads, checked, with enhanced (multi-frame) CT's functional groups resolved."""

from __future__ import annotations

import functools

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from common.ingest.headers import DICOMDIR_SOP_CLASS, Header, Parsed
from common.ingest.reasons import Skip, short_error


def summarize(parsed: Parsed) -> Header:
    """The `Header` of a parsed file; a malformed value is a `Skip`."""
    try:
        return _summarize(parsed)
    except Skip:
        raise
    except Exception as err:
        raise Skip(
            "corrupt-header", f"a header value cannot be read ({short_error(err)})"
        ) from None


def _summarize(parsed: Parsed) -> Header:
    ds = parsed.ds
    meta = Fields(
        parsed.meta
        if parsed.meta is not None
        else getattr(ds, "file_meta", None) or Dataset()
    )
    f = Fields(ds)
    sop_class = f.text(0x00080016) or meta.text(0x00020002)
    if sop_class == DICOMDIR_SOP_CLASS or f.has(0x00041220):
        return Header(
            sop_class=DICOMDIR_SOP_CLASS,
            referenced_files=tuple(_referenced_files(ds)),
        )
    shared = per_frame = None
    if f.has(0x52009229) or f.has(0x52009230):  # enhanced (multi-frame) objects
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    ts = meta.text(0x00020010)
    pixel = ds.get_item(0x7FE00010)  # only after a full parse
    if parsed.pixels is not None:
        pixel_bytes = len(parsed.pixels)
    elif pixel is None or (bool(ts) and _is_compressed(ts)):
        pixel_bytes = -1  # unknown until decoded
    else:
        pixel_bytes = len(pixel.value or b"")
    frames = max(1, int(f.number(0x00280008) or 1))
    return Header(
        patient_id=f.text(0x00100020),
        study_uid=f.text(0x0020000D),
        series_uid=f.text(0x0020000E),
        sop_uid=f.text(0x00080018),
        sop_class=sop_class,
        modality=f.text(0x00080060).upper(),
        series_number=_int(f.number(0x00200011)),
        series_description=f.text(0x0008103E),
        image_type=tuple(v.upper() for v in f.texts(0x00080008)),
        rescale_type=_rescale_type(ds, f, shared, per_frame),
        has_rescale=_has_rescale(ds, f, shared, per_frame),
        has_modality_lut=f.has(0x00283000),
        rows=f.us(0x00280010) or 0,
        columns=f.us(0x00280011) or 0,
        frames=frames,
        samples=f.us(0x00280002) or 1,
        bits_allocated=f.us(0x00280100) or 0,
        photometric=f.text(0x00280004),
        transfer_syntax=ts,
        has_pixels=parsed.has_pixel_element,
        pixel_bytes=pixel_bytes,
        orientation=_orientation(f, shared, per_frame),
        positions=_positions(f, per_frame, frames),
        instance_number=_int(f.number(0x00200013)),
        slice_thickness=f.number(0x00180050),
    )


class Fields:
    """Plain header values read straight from pydicom's raw elements.

    pydicom converts and validates a value on first access (about 15 us each);
    for the ASCII and US values ingest needs, decoding the raw bytes is ten times
    faster, which matters at thousands of files. Values pydicom has already
    converted are used as they are.
    """

    def __init__(self, ds: Dataset):
        self.ds = ds
        # pydicom's own tag -> element map: a lookup there costs a tenth of
        # `get_item` (which converts the tag first); `get_item` stays the way
        # for anything unusual (a deferred read, another pydicom).
        self._elements = getattr(ds, "_dict", None)
        if not isinstance(self._elements, dict):
            self._elements = None

    def element(self, tag: int):
        """`ds.get_item(tag)`, faster."""
        if self._elements is None:
            return self.ds.get_item(tag)
        elem = self._elements.get(tag)
        if elem is not None and isinstance(elem, RawDataElement) and elem.value is None:
            return self.ds.get_item(tag)  # a deferred read: pydicom reads it
        return elem

    def has(self, tag: int) -> bool:
        return self.element(tag) is not None

    def text(self, tag: int) -> str:
        elem = self.element(tag)
        value = None if elem is None else elem.value
        if value is None:
            return ""
        if isinstance(value, bytes):
            if value.isascii():
                return value.decode("ascii").strip(" \x00")
            # Names in a national character set: pydicom knows how to decode.
            value = self.ds[tag].value
        return "" if value is None else str(value).strip()

    def texts(self, tag: int) -> list[str]:
        elem = self.element(tag)
        value = None if elem is None else elem.value
        if value is None:
            return []
        if isinstance(value, bytes):
            text = value.decode("ascii", "replace").strip(" \x00")
            return [part.strip() for part in text.split("\\")] if text else []
        return [str(v).strip() for v in _multi(value)]

    def number(self, tag: int) -> float | None:
        values = self.numbers(tag)
        return values[0] if values else None

    def numbers(self, tag: int) -> list[float] | None:
        try:
            return [float(v) for v in self.texts(tag)] or None
        except ValueError:
            return None

    def us(self, tag: int, signed: bool = False) -> int | None:
        """A US (or, if `signed`, SS) value such as Rows; None when absent."""
        elem = self.element(tag)
        value = None if elem is None else elem.value
        if isinstance(value, bytes):
            if len(value) < 2:
                return None
            order = "little" if getattr(elem, "is_little_endian", True) else "big"
            return int.from_bytes(value[:2], order, signed=signed)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        return _int(value)


@functools.lru_cache(maxsize=64)
def _is_compressed(ts: str) -> bool:
    return UID(ts).is_compressed


def _referenced_files(ds: Dataset):
    for record in ds.get("DirectoryRecordSequence") or []:
        ref = record.get("ReferencedFileID")
        if ref:
            yield tuple(str(part) for part in _multi(ref))


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _functional(group: Dataset | None, sequence: str) -> Dataset | None:
    return _first_item(group, sequence) if group is not None else None


def _rescale_source(ds: Dataset, f: Fields, shared, per_frame) -> Dataset | None:
    """Where Rescale* live: the top level, or the enhanced functional groups."""
    if f.has(0x00281053) or f.has(0x00281052):
        return ds
    for group in (shared, per_frame[0] if per_frame else None):
        item = _functional(group, "PixelValueTransformationSequence")
        if item is not None:
            return item
    return None


def _has_rescale(ds: Dataset, f: Fields, shared, per_frame) -> bool:
    source = _rescale_source(ds, f, shared, per_frame)
    if source is ds:
        return f.number(0x00281053) is not None and f.number(0x00281052) is not None
    return (
        source is not None
        and source.get("RescaleSlope") is not None
        and source.get("RescaleIntercept") is not None
    )


def _rescale_type(ds: Dataset, f: Fields, shared, per_frame) -> str:
    source = _rescale_source(ds, f, shared, per_frame)
    if source is None:
        return ""
    if source is ds:
        return f.text(0x00281054).upper()
    return str(source.get("RescaleType", "") or "").strip().upper()


def _orientation(f: Fields, shared, per_frame) -> tuple[float, ...] | None:
    value = f.numbers(0x00200037)
    if value is None:
        for group in (shared, per_frame[0] if per_frame else None):
            item = _functional(group, "PlaneOrientationSequence")
            if item is not None and item.get("ImageOrientationPatient") is not None:
                value = [float(v) for v in item.ImageOrientationPatient]
                break
    if value is None or len(value) != 6:
        return None
    return tuple(value)


def _positions(
    f: Fields, per_frame, frames: int
) -> tuple[tuple[float, ...], ...] | None:
    if per_frame and len(per_frame) == frames:
        out = []
        for group in per_frame:
            item = _functional(group, "PlanePositionSequence")
            value = item.get("ImagePositionPatient") if item is not None else None
            if value is None or len(value) != 3:
                return None
            out.append(tuple(float(v) for v in value))
        return tuple(out)
    value = f.numbers(0x00200032)
    if value is None or len(value) != 3 or frames != 1:
        return None
    return (tuple(value),)


def _multi(value) -> list:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    return list(value)


def _int(value, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return default

"""Is one file a usable axial CT slice? Decided from its cached `Header` alone.

These checks run on every ingest (they are cheap and depend on the config and on
which decoders are installed), so a re-run never re-opens a file to re-decide.
"""

from __future__ import annotations

import functools
import math

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ImplicitVRLittleEndian

from common.ingest.config import IngestConfig
from common.ingest.headers import Header
from common.ingest.reasons import Skip

CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
# ImageType values of planning images; vendors use their own words for them.
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM"}
# ImageType values of images that are not HU slices of the patient.
DERIVED_TYPES = {
    "MIP",
    "MINIP",
    "MAXIP",
    "PROJECTION IMAGE",
    "SCREEN SAVE",
    "PERFUSION",
    "VOLUME RENDER",
    "CURVED",
}
# |z of the slice normal| >= cos(25 deg): gantry-tilted axial slices still count.
AXIAL_MIN_COSINE = math.cos(math.radians(25.0))
GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
# RescaleType values that mean Hounsfield units, spaces removed: vendors spell it
# their own way (GE writes "HOUNDSFIELD UNIT").
HU_SPELLINGS = {
    "HU",
    "HOUNSFIELDUNIT",
    "HOUNSFIELDUNITS",
    "HOUNDSFIELDUNIT",
    "HOUNDSFIELDUNITS",
}


def check_slice(header: Header, config: IngestConfig) -> None:
    """Raise `Skip` with the reason when the file holds no usable CT slice."""
    _check_kind(header)
    _check_image_type(header)
    _check_orientation(header)
    _check_pixels(header, config)


def check_usable(header: Header, config: IngestConfig) -> None:
    """`check_slice`, and the file must name its patient (to match labels)."""
    check_slice(header, config)
    if not header.patient_id:
        raise Skip(
            "no-patient-id", "no PatientID, so it cannot be matched to labels.csv"
        )


def _check_kind(h: Header) -> None:
    if h.is_dicomdir:
        raise Skip(
            "dicomdir", "DICOMDIR index file; the images it lists are read directly"
        )
    sop = h.sop_class
    name = _uid_name(sop)
    if sop.startswith(SR_PREFIX):
        raise Skip(
            "sop-class",
            f"structured report ({name}), e.g. a dose report; it holds no image",
        )
    if sop.startswith(SECONDARY_CAPTURE_PREFIX):
        raise Skip(
            "secondary-capture",
            f"secondary capture ({name}), e.g. a screenshot or dose summary; "
            "not an original CT slice",
        )
    if h.modality and h.modality != "CT":
        raise Skip("modality", f"Modality is {h.modality}, expected CT")
    if sop and sop not in CT_SOP_CLASSES:
        raise Skip("sop-class", f"SOP class {name} is not a CT image")
    if not sop and h.modality != "CT":
        raise Skip("modality", "no Modality and no SOP Class UID, expected CT")


def _check_image_type(h: Header) -> None:
    values = set(h.image_type)
    shown = "\\".join(h.image_type)
    if values & LOCALIZER_TYPES:
        raise Skip(
            "localizer", f"localiser/scout image (ImageType {shown}), not a slice"
        )
    if values & DERIVED_TYPES:
        raise Skip("derived", f"derived image (ImageType {shown}), not an HU slice")
    if h.rescale_type and not is_hu(h.rescale_type):
        raise Skip(
            "derived",
            f"RescaleType is {h.rescale_type}, not HU (a derived map, not a CT slice)",
        )


def is_hu(rescale_type: str) -> bool:
    """True when a RescaleType value names Hounsfield units (case, spaces ignored)."""
    return "".join(rescale_type.split()).upper() in HU_SPELLINGS


def _check_orientation(h: Header) -> None:
    if h.orientation is None:
        return  # old files without geometry: accept, ordered by InstanceNumber
    row, col = h.orientation[:3], h.orientation[3:]
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    length = math.sqrt(sum(v * v for v in normal))
    if length < 1e-6:
        raise Skip(
            "bad-geometry",
            f"ImageOrientationPatient {list(h.orientation)} is degenerate",
        )
    if abs(normal[2]) / length >= AXIAL_MIN_COSINE:
        return
    axis = max(range(3), key=lambda i: abs(normal[i]))
    plane = ("sagittal", "coronal", "axial")[axis]
    raise Skip(
        "not-axial",
        f"{plane}/oblique image (ImageOrientationPatient "
        f"{[round(v, 3) for v in h.orientation]}); only axial slices are used",
    )


def _check_pixels(h: Header, config: IngestConfig) -> None:
    if not h.has_pixels:
        if h.rows == 0 and h.columns == 0:
            # Not even the image's size: the file stops before its image part.
            raise Skip(
                "truncated",
                "the file ends before its image (no Rows, Columns or Pixel Data); "
                "it was cut short, copy it again from the PACS export",
            )
        raise Skip("no-pixels", "no Pixel Data element, so no image to use")
    if h.rows <= 0 or h.columns <= 0:
        raise Skip("bad-geometry", "Rows/Columns missing or zero")
    if h.bits_allocated not in (8, 16, 32):
        raise Skip(
            "bad-geometry", f"BitsAllocated {h.bits_allocated} is not valid for CT"
        )
    if h.samples != 1 or h.photometric not in GREYSCALE:
        raise Skip(
            "colour",
            f"PhotometricInterpretation {h.photometric or 'missing'} with "
            f"{h.samples} samples per pixel; a CT slice is greyscale",
        )
    decoded = h.rows * h.columns * h.frames * h.samples * (h.bits_allocated // 8)
    limit = config.max_decoded_mb * 2**20
    if decoded > limit:
        raise Skip(
            "too-large",
            f"header claims {h.rows}x{h.columns} pixels x {h.frames} frame(s) "
            f"({decoded / 2**30:.1f} GiB decoded), above the "
            f"{config.max_decoded_mb} MB limit (max-decoded-mb); the header is "
            "probably corrupt",
        )
    _check_transfer_syntax(h)
    if 0 <= h.pixel_bytes < decoded:
        raise Skip(
            "truncated",
            f"pixel data is truncated ({h.pixel_bytes} of {decoded} bytes); copy "
            "the file again from the PACS export",
        )
    if not h.has_rescale:
        what = (
            "uses a Modality LUT Sequence instead of RescaleSlope/RescaleIntercept"
            if h.has_modality_lut
            else "RescaleSlope/RescaleIntercept missing"
        )
        raise Skip(
            "no-rescale",
            f"{what}: stored values cannot be converted to HU; re-export with "
            "the complete CT Image module",
        )


def _check_transfer_syntax(h: Header) -> None:
    problem = transfer_syntax_problem(h.transfer_syntax or ImplicitVRLittleEndian)
    if problem is not None:
        raise Skip(*problem)


@functools.lru_cache(maxsize=64)
def transfer_syntax_problem(ts: str) -> tuple[str, str] | None:
    """(code, detail) when pixels in this syntax cannot be decoded here."""
    uid = UID(ts)
    name = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (
            "transfer-syntax",
            f"transfer syntax {name} is not supported; export uncompressed or as "
            "JPEG, JPEG-LS, JPEG 2000 or RLE",
        )
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        return (
            "no-decoder",
            f"transfer syntax {name} needs a decoder that is not installed ({missing})",
        )
    return None


@functools.lru_cache(maxsize=256)
def _uid_name(uid: str) -> str:
    if not uid:
        return "no SOP Class UID"
    name = UID(uid).name
    return name if name != uid else uid

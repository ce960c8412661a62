"""Small synthetic CT files for the ingest tests (no tests in here).

`chest_hu` draws a 64x64 axial slice (body, two lungs, a spine); `ct_dataset`
wraps HU in a CT Image Storage dataset with the knobs vendors turn (rescale,
signedness, BitsStored, padding, photometric, geometry); `write_site` lays out a
site folder with labels.csv.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def chest_hu(size: int = 64, seed: int = 0, lung: bool = True) -> np.ndarray:
    """An axial chest slice in HU (int16): air outside, body, lungs, spine."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.42) ** 2 + (y / 0.3) ** 2 < 1] = 40.0
    if lung:
        for cx in (-0.18, 0.18):
            hu[((x - cx) / 0.13) ** 2 + (y / 0.2) ** 2 < 1] = -850.0
    hu[(x / 0.05) ** 2 + ((y - 0.2) / 0.05) ** 2 < 1] = 700.0
    hu += rng.normal(0, 10, hu.shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def ct_dataset(
    hu: np.ndarray | None = None,
    *,
    patient_id: str = "P1",
    study: str = "1.2.826.0.1.3680043.10.1.1",
    series: str = "1.2.826.0.1.3680043.10.1.1.1",
    sop: str | None = None,
    z: float = 0.0,
    instance: int = 1,
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    orientation: tuple[float, ...] = AXIAL,
    intercept: float = -1024.0,
    slope: float = 1.0,
    signed: bool = True,
    bits_stored: int = 16,
    padding: int | None = None,
    photometric: str = "MONOCHROME2",
    series_number: int = 2,
    description: str = "Axial lung",
    thickness: float = 1.0,
) -> Dataset:
    """A CT Image Storage dataset holding `hu` (default: `chest_hu()`)."""
    hu = chest_hu() if hu is None else hu
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    dtype = np.int16 if signed else np.uint16
    stored = stored.astype(dtype)
    sop = sop or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = patient_id
    ds.PatientName = f"Test^{patient_id}"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20200301", "093000", "1"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImageType = list(image_type)
    ds.SliceThickness = thickness
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = [-22.0, -22.0, z]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.RescaleType = "HU"
    if padding is not None:
        ds.PixelPaddingValue = padding
    ds.PixelData = stored.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    patient_id: str,
    n: int = 4,
    *,
    study: str | None = None,
    series: str | None = None,
    seed: int = 0,
    **kwargs,
) -> list[Path]:
    """`n` axial slices of one series, 2 mm apart, named in reverse order."""
    study = study or generate_uid()
    series = series or generate_uid()
    paths = []
    for i in range(n):
        ds = ct_dataset(
            chest_hu(seed=seed + i),
            patient_id=patient_id,
            study=study,
            series=series,
            z=2.0 * i,
            instance=i + 1,
            **kwargs,
        )
        # File names in the opposite order of the positions: ingest must sort.
        paths.append(save(ds, folder / patient_id / f"IM{n - i:04d}.dcm"))
    return paths


def write_labels(site: Path, rows: list[tuple[str, str]], name="labels.csv") -> Path:
    path = site / name
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "label"])
        writer.writerows(rows)
    return path


def write_site(site: Path, patients: dict[str, int], n: int = 4) -> Path:
    """A clean site: `n` slices per patient and labels.csv."""
    for index, pid in enumerate(sorted(patients)):
        write_series(site, pid, n, seed=10 * index)
    write_labels(site, [(pid, str(label)) for pid, label in sorted(patients.items())])
    return site


def tree_hashes(root: Path) -> dict[str, tuple[str, int]]:
    """SHA-256 and mtime of every file: proof that nothing was written or touched."""
    return {
        str(p.relative_to(root)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def enhanced_ct_dataset(
    frames: list[np.ndarray], z: list[float], patient_id: str = "P1", **kwargs
) -> Dataset:
    """A multi-frame Enhanced CT: geometry and rescale in functional groups."""
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    ds = ct_dataset(frames[0], patient_id=patient_id, **kwargs)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    intercept, slope = float(ds.RescaleIntercept), float(ds.RescaleSlope)
    for name in (
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "PixelSpacing",
        "SliceThickness",
    ):
        delattr(ds, name)
    orientation, transform = Dataset(), Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    transform.RescaleIntercept, transform.RescaleSlope = intercept, slope
    transform.RescaleType = "HU"
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for position in z:
        plane = Dataset()
        plane.ImagePositionPatient = [-22.0, -22.0, position]
        group = Dataset()
        group.PlanePositionSequence = Sequence([plane])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(frames)
    stored = np.stack([np.rint((f - intercept) / slope) for f in frames])
    ds.PixelData = stored.astype(np.int16).tobytes()
    return ds

"""Writing phantom sites as DICOM CT files plus a labels.csv per site."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from simulations.phantoms.patients import PatientSpec, plan_phantom_site
from simulations.phantoms.profiles import PhantomSite, SiteProfile, paper_sites
from simulations.phantoms.render import PhantomSlice, render_patient
from simulations.run_log import progress


def stored_pixels(profile: SiteProfile, sl: PhantomSlice) -> NDArray[np.int16]:
    """Raw stored values (HU - intercept), with padding outside the FOV."""
    raw = (sl.hu.astype(np.int32) - int(profile.rescale_intercept)).astype(np.int16)
    if profile.padding_value is not None:
        raw[~sl.fov] = profile.padding_value
    return raw


def _uid(*parts: object) -> str:
    # Deterministic UIDs: rewriting a study with the same seed gives the same files.
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _dataset(
    profile: SiteProfile, spec: PatientSpec, i: int, sl: PhantomSlice, key: str
) -> Dataset:
    study_uid = _uid(key, spec.patient_id, "study")
    sop_uid = _uid(key, spec.patient_id, "image", i)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(key, spec.patient_id, "series")
    ds.FrameOfReferenceUID = _uid(key, spec.patient_id, "frame")
    ds.PositionReferenceIndicator = ""

    ds.PatientName = f"Phantom^{spec.patient_id}"
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = spec.sex
    ds.PatientAge = f"{spec.age:03d}Y"
    ds.PatientIdentityRemoved = "YES"

    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{9 + spec.index % 9:02d}3000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST (synthetic phantom)"
    ds.SeriesDescription = "Axial lung"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = i + 1
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model
    ds.InstitutionName = profile.institution
    ds.KVP = profile.kvp
    ds.ConvolutionKernel = profile.kernel
    ds.SliceThickness = profile.slice_thickness
    ds.ReconstructionDiameter = profile.fov_mm
    ds.PatientPosition = "HFS"
    ds.ImageComments = "Synthetic phantom, not patient data"

    sp = profile.pixel_spacing
    corner = -profile.fov_mm / 2 + sp / 2
    ds.PixelSpacing = [round(sp, 6), round(sp, 6)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [round(corner, 4), round(corner, 4), sl.z]
    ds.SliceLocation = sl.z

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = profile.matrix
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 1
    if profile.padding_value is not None:
        ds.PixelPaddingValue = profile.padding_value
    ds.RescaleIntercept = profile.rescale_intercept
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    ds.PixelData = stored_pixels(profile, sl).astype("<i2").tobytes()
    return ds


def write_study(
    out_dir: Path,
    scale: float = 1.0,
    seed: int = 0,
    slices_per_patient: int = 6,
    slice_choice: str = "even",
) -> dict[str, Path]:
    """Write the phantom study; return {site_name: site_dir}."""
    key = f"fedbigbigan-phantom/{seed}/{scale}/{slices_per_patient}"
    return write_sites(
        out_dir, paper_sites(scale), seed, slices_per_patient, key, slice_choice
    )


def write_sites(
    out_dir: Path,
    sites: list[PhantomSite],
    seed: int = 0,
    slices_per_patient: int = 6,
    key: str | None = None,
    slice_choice: str = "even",
) -> dict[str, Path]:
    """Write phantom sites as DICOM + labels.csv; return {site_name: site_dir}.

    `key` seeds the DICOM UIDs (same key and slice choice, same files)."""
    out_dir = Path(out_dir)
    key = key or f"fedbigbigan-phantom/{seed}/{slices_per_patient}"
    if slice_choice != "even":  # "even" keeps the UIDs it always had
        key += f"/{slice_choice}"
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"site names must be unique, got {names}")
    prefixes = [s.profile.id_prefix for s in sites]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"patient id prefixes must be unique, got {prefixes}")
    written: dict[str, Path] = {}
    for site in sites:
        profile = site.profile
        site_dir = out_dir / site.name
        rows = []
        for spec in progress(
            plan_phantom_site(site, seed, slices_per_patient, slice_choice),
            f"writing {site.name}",
            site.n_covid + site.n_other,
        ):
            slices = render_patient(spec)
            patient_dir = site_dir / "dicom" / spec.patient_id
            patient_dir.mkdir(parents=True, exist_ok=True)
            for i, sl in enumerate(slices):
                ds = _dataset(profile, spec, i, sl, key)
                ds.save_as(patient_dir / f"{i + 1:02d}.dcm", enforce_file_format=True)
            rows.append((spec.patient_id, spec.label))
        with open(site_dir / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient_id", "label"])
            writer.writerows(sorted(rows))
        written[site.name] = site_dir
    return written

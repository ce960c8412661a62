"""What a PACS export holds besides axial CT, and which series are kept."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)
from test_ingest_support import (
    CORONAL,
    chest_hu,
    ct_dataset,
    save,
    write_labels,
    write_series,
)

from common.ingest import IngestConfig, ingest_site

CONFIG = IngestConfig(image_size=32)


def _report(result) -> dict[str, dict]:
    return {f["path"]: f for f in json.loads(result.report_path.read_text())["files"]}


def _dose_report(patient_id: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayRadiationDoseSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = XRayRadiationDoseSRStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient_id, "SR"
    return ds


def test_a_pacs_export_keeps_only_axial_ct_slices(tmp_path):
    site = tmp_path / "site"
    write_series(site, "P", 3)
    study = "1.2.826.0.1.3680043.10.7"
    extras = {
        "scout.dcm": ct_dataset(
            patient_id="P", study=study, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
        ),
        "coronal.dcm": ct_dataset(patient_id="P", study=study, orientation=CORONAL),
        "mip.dcm": ct_dataset(
            patient_id="P", study=study, image_type=("DERIVED", "SECONDARY", "MIP")
        ),
        "screen.dcm": ct_dataset(
            patient_id="P", study=study, sop_class=SecondaryCaptureImageStorage
        ),
        "mr.dcm": ct_dataset(
            patient_id="P", study=study, modality="MR", sop_class=MRImageStorage
        ),
    }
    for name, ds in extras.items():
        save(ds, site / "P" / "extra" / name)
    dose = _dose_report("P")
    dose.save_as(site / "P" / "extra" / "dose.dcm", enforce_file_format=True)
    write_labels(site, [("P", "1")])
    result = ingest_site(site, cache_dir=tmp_path / "c", config=CONFIG)
    assert result.summary.slices == 3
    files = _report(result)
    codes = {name: files[f"P/extra/{name}"]["code"] for name in [*extras, "dose.dcm"]}
    assert codes == {
        "scout.dcm": "localizer",
        "coronal.dcm": "not-axial",
        "mip.dcm": "derived",
        "screen.dcm": "secondary-capture",
        "mr.dcm": "modality",
        "dose.dcm": "sop-class",
    }
    assert "coronal" in files["P/extra/coronal.dcm"]["reason"]
    assert "dose report" in files["P/extra/dose.dcm"]["reason"]
    assert all(f["status"] == "excluded" for f in files.values() if f["code"])


def test_slices_are_ordered_along_the_body_axis(tmp_path):
    site = tmp_path / "site"
    paths = write_series(site, "P", 4)  # file names run against the positions
    tilt = math.radians(15)  # a gantry-tilted axial series still counts
    for path in paths:
        import pydicom

        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, math.cos(tilt), -math.sin(tilt)]
        ds.save_as(path)
    write_labels(site, [("P", "0")])
    result = ingest_site(site, cache_dir=tmp_path / "c", config=CONFIG)
    (series,) = result.patients[0].series
    assert list(series.positions) == sorted(series.positions)
    assert series.sources == (
        "P/IM0004.dcm",
        "P/IM0003.dcm",
        "P/IM0002.dcm",
        "P/IM0001.dcm",
    )


def test_without_positions_instance_numbers_order_the_slices(tmp_path):
    site = tmp_path / "site"
    series_uid = generate_uid()
    for instance, name in [(3, "a.dcm"), (1, "b.dcm"), (2, "c.dcm")]:
        ds = ct_dataset(patient_id="P", series=series_uid, instance=instance)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        save(ds, site / name)
    write_labels(site, [("P", "1")])
    result = ingest_site(site, cache_dir=tmp_path / "c", config=CONFIG)
    assert result.patients[0].series[0].sources == ("b.dcm", "c.dcm", "a.dcm")


@pytest.mark.parametrize(("policy", "kept"), [("one-per-study", [5]), ("all", [5, 2])])
def test_one_series_per_study_by_default(tmp_path, policy, kept):
    site = tmp_path / "site"
    study = generate_uid()
    write_series(site / "lung", "P", 5, study=study, description="Lung 1mm")
    write_series(
        site / "soft",
        "P",
        2,
        study=study,
        description="Soft 5mm",
        thickness=5.0,
        series_number=3,
    )
    write_labels(site, [("P", "1")])
    config = IngestConfig(image_size=32, series=policy)
    result = ingest_site(site, cache_dir=tmp_path / "c", config=config)
    assert [len(s.sources) for s in result.patients[0].series] == kept
    if policy == "one-per-study":
        skipped = _report(result)["soft/P/IM0001.dcm"]
        assert skipped["code"] == "other-series"
        assert (
            "series 2 'Lung 1mm' (5 slices) of the same study is kept"
            in (skipped["reason"])
        )


def test_slice_policies(tmp_path):
    site = tmp_path / "site"
    series = generate_uid()
    for i in range(6):
        hu = chest_hu(seed=i, lung=i in (1, 2, 3, 4))  # 0 and 5: below the lungs
        ds = ct_dataset(hu, patient_id="P", series=series, z=float(i), instance=i)
        save(ds, site / f"{i}.dcm")
    write_labels(site, [("P", "1")])
    cache = tmp_path / "c"
    lung = ingest_site(site, None, cache, IngestConfig(32, slice_policy="lung"))
    (s,) = lung.patients[0].series
    assert s.keep == (1, 2, 3, 4)
    assert _report(lung)["0.dcm"]["code"] == "slice-policy"
    central = IngestConfig(32, slice_policy="central", central_slices=2)
    picked = ingest_site(site, None, cache, central).patients[0]
    assert picked.series[0].keep == (2, 3) and picked.load().shape == (2, 32, 32)
    everything = ingest_site(site, None, cache, CONFIG).patients[0]
    np.testing.assert_array_equal(everything.load()[2:4], picked.load())


def test_dicomdir_entries_missing_from_the_export_are_reported(tmp_path):
    source = tmp_path / "source"
    paths = write_series(source, "P", 3)
    fileset = FileSet()
    for path in paths:
        fileset.add(path)
    site = tmp_path / "cd"
    fileset.write(site)
    images = sorted(p for p in site.rglob("IM*"))
    images[0].unlink()  # lost in the copy
    images[1].rename(images[1].with_name(images[1].name.lower()))  # case changed
    write_labels(tmp_path, [("P", "1")])
    result = ingest_site(site, tmp_path / "labels.csv", tmp_path / "c", CONFIG)
    files = _report(result)
    assert files["DICOMDIR"]["code"] == "dicomdir"
    missing = [f for f in files.values() if f["code"] == "dicomdir-missing"]
    assert [f["path"] for f in missing] == [images[0].relative_to(site).as_posix()]
    assert "listed in DICOMDIR DICOMDIR but missing" in missing[0]["reason"]
    assert result.summary.slices == 2


@pytest.mark.parametrize(
    ("rescale_type", "used"),
    [
        ("HU", True),
        ("Hounsfield Units", True),
        ("HOUNSFIELD UNIT", True),
        ("HOUNDSFIELD UNIT", True),  # GE's spelling
        ("houndsfield  units", True),
        ("US", False),  # unspecified: a derived map
        ("MGML", False),
    ],
)
def test_rescale_type_spellings_of_hu(tmp_path, rescale_type, used):
    import pydicom

    site = tmp_path / "site"
    for path in write_series(site, "P", 2):
        ds = pydicom.dcmread(path)
        ds.RescaleType = rescale_type
        ds.save_as(path)
    write_labels(site, [("P", "1")])
    result = ingest_site(site, None, tmp_path / "c", IngestConfig(image_size=32))
    codes = {f["code"] for f in _report(result).values()}
    if used:
        assert result.summary.slices == 2 and codes == {None}
    else:
        assert result.summary.slices == 0 and codes == {"derived"}

"""Tests of the synthetic chest-CT DICOM study (simulations.phantoms)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy.stats import rankdata

from simulations import phantoms
from simulations.phantoms import (
    COVID,
    OTHER,
    PROFILES,
    SITE_ROLES,
    site_counts,
    write_study,
)
from simulations.phantoms.patients import _slice_weights

SCALE = 0.1
SLICES = 2
SEED = 7


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for labels==1 vs labels==0 (Mann-Whitney)."""
    ranks = rankdata(scores)
    n_pos = int((labels == 1).sum())
    n_neg = labels.size - n_pos
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _labels(site_dir: Path) -> dict[str, int]:
    with open(site_dir / "labels.csv", newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader) == ["patient_id", "label"]
        return {pid: int(label) for pid, label in reader}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("phantom")
    return write_study(out, scale=SCALE, seed=SEED, slices_per_patient=SLICES)


def test_site_counts_follow_the_original_study() -> None:
    full = site_counts(1.0)
    assert full["hospital_a_ge"][0] + full["hospital_a_neuviz"][0] == 83
    assert full["hospital_a_ge"][1] + full["hospital_a_neuviz"][1] == 83
    assert full["hospital_b"] == (15, 20)
    for n_covid, n_other in site_counts(0.01).values():
        assert n_covid >= 2 and n_other >= 2
    assert SITE_ROLES == {
        "hospital_a_ge": "train",
        "hospital_a_neuviz": "train",
        "hospital_b": "external",
    }


def test_layout_labels_and_counts(study: dict[str, Path]) -> None:
    assert set(study) == set(SITE_ROLES)
    all_ids: list[str] = []
    for site, site_dir in study.items():
        labels = _labels(site_dir)
        folders = sorted(p.name for p in (site_dir / "dicom").iterdir())
        assert sorted(labels) == folders
        assert set(labels.values()) <= {COVID, OTHER}
        n_covid, n_other = site_counts(SCALE)[site]
        assert sum(v == COVID for v in labels.values()) == n_covid
        assert sum(v == OTHER for v in labels.values()) == n_other
        all_ids += folders
    assert len(all_ids) == len(set(all_ids))


def test_files_are_valid_ct_images(study: dict[str, Path]) -> None:
    for site_dir in study.values():
        for patient_dir in (site_dir / "dicom").iterdir():
            files = sorted(patient_dir.glob("*.dcm"))
            assert len(files) == SLICES
            datasets = [pydicom.dcmread(f) for f in files]
            for ds in datasets:
                assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
                assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
                assert ds.SOPClassUID == CTImageStorage
                assert ds.Modality == "CT"
                assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
                assert ds.PatientID == patient_dir.name
                assert ds.PhotometricInterpretation == "MONOCHROME2"
                assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
                assert ds.pixel_array.dtype == np.int16
            # One study, one series per patient; unique images.
            assert len({ds.StudyInstanceUID for ds in datasets}) == 1
            assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
            assert len({ds.SOPInstanceUID for ds in datasets}) == SLICES
            assert [ds.InstanceNumber for ds in datasets] == [1, 2]
            z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
            assert z == [float(ds.SliceLocation) for ds in datasets]
            assert z[0] != z[1]


@pytest.mark.parametrize("site", list(PROFILES))
def test_hu_round_trip_and_padding(study: dict[str, Path], site: str) -> None:
    spec = phantoms.plan_site(site, SCALE, SEED, SLICES)[1]
    expected = phantoms.render_patient(spec)[1]
    ds = pydicom.dcmread(study[site] / "dicom" / spec.patient_id / "02.dcm")
    raw = ds.pixel_array
    hu = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    fov = expected.fov
    assert not fov[0, 0] and fov[ds.Rows // 2, ds.Columns // 2]
    np.testing.assert_array_equal(hu[fov], expected.hu[fov])
    assert _labels(study[site])[spec.patient_id] == spec.label
    if PROFILES[site].padding_value is None:
        assert "PixelPaddingValue" not in ds
        assert np.all(hu[~fov] == -1000)
    else:
        assert ds.PixelPaddingValue == -2000
        assert np.all(raw[~fov] == -2000)


def test_sites_really_differ(study: dict[str, Path]) -> None:
    first = {
        site: pydicom.dcmread(next((site_dir / "dicom").glob("*/01.dcm")))
        for site, site_dir in study.items()
    }
    ge, nv, b = first["hospital_a_ge"], first["hospital_a_neuviz"], first["hospital_b"]
    assert (ge.Rows, nv.Rows, b.Rows) == (512, 512, 256)
    assert (ge.SliceThickness, nv.SliceThickness, b.SliceThickness) == (1, 5, 5)
    assert (ge.RescaleIntercept, nv.RescaleIntercept, b.RescaleIntercept) == (
        -1024,
        -1024,
        0,
    )
    assert (ge.BitsStored, nv.BitsStored) == (12, 16)
    assert ge.Manufacturer == "GE MEDICAL SYSTEMS"
    assert (nv.ManufacturerModelName, b.ManufacturerModelName) == (
        "NeuViz 128",
        "NeuViz 64",
    )
    spacings = {float(ds.PixelSpacing[0]) for ds in first.values()}
    assert len(spacings) == 3


def _pixel_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(root)): pydicom.dcmread(f).PixelData
        for f in sorted(root.rglob("*.dcm"))
    }


def test_reproducible_from_seed(tmp_path: Path) -> None:
    kwargs = {"scale": 0.02, "slices_per_patient": 1}
    write_study(tmp_path / "a", seed=3, **kwargs)
    write_study(tmp_path / "b", seed=3, **kwargs)
    write_study(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (_pixel_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)
    for site in SITE_ROLES:
        assert (tmp_path / "a" / site / "labels.csv").read_bytes() == (
            tmp_path / "b" / site / "labels.csv"
        ).read_bytes()


def test_phantom_hu_shape() -> None:
    for name, profile in PROFILES.items():
        hu = phantoms.phantom_hu(name, label=COVID, slice_fraction=0.8)
        assert hu.shape == (profile.matrix, profile.matrix)
        assert hu.dtype == np.int16
        assert hu.min() >= -1024


def test_global_intensity_does_not_separate_classes() -> None:
    """Mean body HU is ~uninformative, while lesion density patterns are not."""
    labels, body_mean, density_pattern = [], [], []
    for site in PROFILES:
        for spec, slices in phantoms.iter_site(site, 0.3, 0, 2):
            body = np.concatenate([s.hu[s.body] for s in slices]).astype(float)
            lung = np.concatenate([s.hu[s.lung] for s in slices]).astype(float)
            labels.append(spec.label)
            body_mean.append(body.mean())
            # Ground glass vs consolidation share of the lungs.
            ggo = ((lung > -650) & (lung < -250)).mean()
            dense = ((lung > -150) & (lung < 100)).mean()
            density_pattern.append(ggo - dense)
    y = np.array(labels)
    assert 0.3 <= _auc(np.array(body_mean), y) <= 0.7
    assert _auc(np.array(density_pattern), y) >= 0.7


def _lesion_weight_ratio(spec: phantoms.PatientSpec) -> float:
    """Smallest lesion weight among the patient's slices over its peak in the lungs."""
    grid = tuple(np.linspace(0.08, 0.94, 431))
    n = len(spec.fractions)
    weight = _slice_weights(spec.findings, spec.fractions + grid)  # one scale
    return float(weight[:n].min() / weight[n:].max())


def test_findings_slice_choice_keeps_the_patients_and_takes_the_lesion_slices() -> None:
    site = phantoms.PhantomSite(PROFILES["hospital_a_neuviz"], 20, 20)
    even = phantoms.plan_phantom_site(site, SEED, 6)
    found = phantoms.plan_phantom_site(site, SEED, 6, "findings")
    ratios = {"even": [], "findings": []}
    for a, b in zip(even, found, strict=True):
        # the same patient: only the slices differ
        assert (a.patient_id, a.label, a.anatomy, a.findings) == (
            b.patient_id,
            b.label,
            b.anatomy,
            b.findings,
        )
        if a.findings.kind == "none":  # no findings: the whole lungs, as before
            assert (a.fractions, a.z_positions) == (b.fractions, b.z_positions)
            continue
        thickness = site.profile.slice_thickness
        steps = np.diff(b.z_positions) / thickness
        assert (steps <= -1).all() and np.allclose(steps, np.round(steps))
        on_grid = np.asarray(b.z_positions) / thickness  # reconstructed positions
        assert np.allclose(on_grid, np.round(on_grid))
        assert min(b.fractions) > 0.05 and max(b.fractions) < 0.97
        ratios["even"].append(_lesion_weight_ratio(a))
        ratios["findings"].append(_lesion_weight_ratio(b))
    assert len(ratios["findings"]) >= 30  # ~10% of patients have no findings
    # every chosen slice sits where the lesion is at least ~half its peak
    assert min(ratios["findings"]) >= 0.4
    assert np.mean(ratios["even"]) < np.mean(ratios["findings"]) - 0.2


def test_unknown_slice_choice_is_refused_with_the_choices() -> None:
    site = phantoms.PhantomSite(PROFILES["hospital_b"], 2, 2)
    with pytest.raises(ValueError, match="even, findings"):
        phantoms.plan_phantom_site(site, SEED, 2, "middle")


def test_train_central_refuses_a_study_written_with_another_slice_choice(
    tmp_path: Path,
) -> None:
    from common.commands import main

    labels = tmp_path / "data" / "hospital_b" / "labels.csv"
    labels.parent.mkdir(parents=True)
    labels.write_text("patient_id,label\n")  # an earlier run's study (even slices)
    with pytest.raises(SystemExit, match="another phantom study"):
        main(["train-central", "--out", str(tmp_path), "--slice-choice", "findings"])

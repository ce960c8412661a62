"""Patient-level splits: disjoint, complete, stratified, reproducible."""

from pathlib import Path

from common.ingest.site_index import Patient
from common.splits import split_patients


def _patients(n_pos: int, n_neg: int) -> list[Patient]:
    labels = [1] * n_pos + [0] * n_neg
    return [Patient(f"P{i:03d}", y, (Path(f"{i}.dcm"),)) for i, y in enumerate(labels)]


def test_no_patient_in_two_splits_and_none_lost():
    patients = _patients(42, 41)
    splits = split_patients(patients, seed=3)
    ids = [p.patient_id for group in splits.values() for p in group]
    assert sorted(ids) == sorted(p.patient_id for p in patients)
    assert len(ids) == len(set(ids))


def test_class_balance_within_one_patient_of_target():
    patients = _patients(42, 41)
    splits = split_patients(patients, val=0.1, test=0.1, seed=1)
    for name, fraction in (("val", 0.1), ("test", 0.1), ("train", 0.8)):
        for label, total in ((1, 42), (0, 41)):
            got = sum(p.label == label for p in splits[name])
            assert abs(got - fraction * total) <= 1, (name, label, got)


def test_reproducible_by_seed():
    patients = _patients(20, 20)
    a = split_patients(patients, seed=7)
    b = split_patients(patients, seed=7)
    c = split_patients(patients, seed=8)
    assert a == b
    assert a != c

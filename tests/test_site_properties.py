"""A site's aggregates in its role reply: the audit lets counts and one AUC
through and nothing else; the server refuses sites and warns from them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client.audit_checks import _properties
from client.audit_records import AuditRefusal
from client.site_properties import patients_per_class, shortcut_property
from common.model.dataset import SliceSet
from server.site_properties import shortcut_lines, site_refusals, site_shortcuts

BASE = {"role": "train", "n_train": 10}


def test_the_audit_accepts_counts_and_a_shortcut_auc():
    _properties(BASE)
    _properties(
        {
            **BASE,
            "n_pos_patients": 3,
            "n_neg_patients": 4,
            "shortcut-auc": 0.93,
            "shortcut-attribute": 0,
        }
    )


@pytest.mark.parametrize(
    "extra",
    [
        {"shortcut-auc": 1.5},
        {"shortcut-auc": "format"},
        {"shortcut-attribute": 99},
        {"n_pos_patients": -1},
        {"patient_id": "P1"},
    ],
)
def test_the_audit_refuses_anything_else(extra):
    with pytest.raises(AuditRefusal):
        _properties({**BASE, **extra})


def test_a_site_reports_patients_per_class_and_its_strongest_shortcut(tmp_path):
    split = SliceSet(
        np.zeros((5, 4, 4, 3), np.float32),
        np.array([1, 1, 0, 0, 0]),
        np.array([0, 0, 1, 2, 2]),
    )
    assert patients_per_class({"train": split, "val": split}) == {
        "n_pos_patients": 2,
        "n_neg_patients": 4,
    }
    report = tmp_path / "ingest_report.json"
    report.write_text(json.dumps({"shortcuts": {"auc": {"format": 0.6, "mode": 0.9}}}))
    assert shortcut_property(report) == {
        "shortcut-auc": 0.9,
        "shortcut-attribute": 1,
    }
    assert shortcut_property(tmp_path / "missing.json") == {}


def test_the_server_refuses_and_warns_one_line_per_site():
    roles = {1: ("train", 10), 2: ("train", 10), 3: ("external", 0)}
    props = {
        1: {"n_pos_patients": 3, "n_neg_patients": 3, "shortcut-auc": 0.55},
        2: {"n_pos_patients": 3, "n_neg_patients": 1, "shortcut-auc": 0.95},
        3: {"n_pos_patients": 0, "n_neg_patients": 2},
    }
    props[2]["shortcut-attribute"] = 0
    refusals = site_refusals(roles, props, 2)
    assert len(refusals) == 2
    assert refusals[0].startswith("site node 2 (train): 3 COVID-19, 1 other")
    assert refusals[1].startswith("site node 3 (external): 0 COVID-19")
    lines = shortcut_lines({"site_shortcuts": site_shortcuts(roles, props)})
    assert lines == [
        "warning: site node 2 (train): shortcut: file metadata alone predicts the "
        "label (AUC 0.95, format); the model may learn it instead of the lungs "
        "(see the site's ingest report)"
    ]

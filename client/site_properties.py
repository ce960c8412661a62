"""What a site adds to its answer to the server's first query (its role):
patients per class, for the site checks before round 1, and the strongest
shortcut AUC of its ingest report. Aggregates only: two counts, one AUC and
the index of the attribute it belongs to (`common.ingest.shortcuts.SHORTCUT_NAMES`).
"""

from __future__ import annotations

import json

import numpy as np

from common.ingest.report import REPORT_FILE
from common.ingest.shortcuts import SHORTCUT_NAMES
from common.ingest.site_checks import NEG, POS, SHORTCUT_ATTRIBUTE, SHORTCUT_AUC
from common.model.dataset import SliceSet


def patients_per_class(data: dict[str, SliceSet]) -> dict[str, int]:
    """Patients of each class over all of a site's splits."""
    counts = {POS: 0, NEG: 0}
    for split in data.values():
        for i in np.unique(split.patient):
            label = int(split.labels[split.patient == i][0])
            counts[POS if label == 1 else NEG] += 1
    return counts


def shortcut_property(report_path) -> dict[str, float | int]:
    """The ingest report's strongest shortcut AUC and its attribute (nothing
    when the report holds no check)."""
    try:
        shortcuts = json.loads(report_path.read_text()).get("shortcuts")
    except (OSError, ValueError):
        return {}
    aucs = ((shortcuts or {}).get("auc")) or {}
    aucs = {k: float(v) for k, v in aucs.items() if k in SHORTCUT_NAMES}
    if not aucs:
        return {}
    name = max(aucs, key=lambda k: aucs[k])
    return {SHORTCUT_AUC: aucs[name], SHORTCUT_ATTRIBUTE: SHORTCUT_NAMES.index(name)}


def site_properties(site, run, data: dict[str, SliceSet]) -> dict:
    """Class counts and the shortcut AUC of this site, for `get_properties`."""
    from client.site import cache_dir

    return {
        **patients_per_class(data),
        **shortcut_property(cache_dir(site, run) / REPORT_FILE),
    }

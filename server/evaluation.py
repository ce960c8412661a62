"""Pool sites' score histograms into the paper's table: AUC with DeLong 95% CI,
sensitivity and specificity with Wilson 95% CIs per split, at one cut-off chosen on
validation data (Youden's J) and applied unchanged to every split."""

from __future__ import annotations

import numpy as np

from common.evaluation.metrics import (
    GRID_BINS,
    auc_ci_from_histograms,
    auc_from_histograms,
    youden_threshold,
)
from common.evaluation.site_evaluation import split_metrics

SPLITS = ("train", "val", "test", "external")
CUTOFF_SPLIT = "val"  # the only split the cut-off may be chosen on


def pooled(site_hist: dict, split: str, level: str) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the sites' positive and negative histograms for one split and level
    (all zeros when no site has the split, e.g. a federation without an external
    site)."""
    pos = sum(
        (
            h[f"{split}/{level}/pos"]
            for h in site_hist.values()
            if f"{split}/{level}/pos" in h
        ),
        np.zeros(GRID_BINS, np.int64),
    )
    neg = sum(
        (
            h[f"{split}/{level}/neg"]
            for h in site_hist.values()
            if f"{split}/{level}/neg" in h
        ),
        np.zeros(GRID_BINS, np.int64),
    )
    return np.asarray(pos), np.asarray(neg)


def cutoffs(site_hist: dict, level: str = "patient") -> dict[str, float]:
    """Youden's J cut-off per level, from the pooled validation split alone."""
    return {
        lvl: youden_threshold(*pooled(site_hist, CUTOFF_SPLIT, lvl))
        for lvl in dict.fromkeys((level, "slice"))
    }


def summarise(
    site_hist: dict, level: str = "patient", external: dict | None = None
) -> dict:
    """Metrics per split at `level` (patient by default), plus the slice level.

    Each level's cut-off comes from the validation split alone; on val itself the
    operating point is therefore optimistic, on train/test/external it is honest.
    Slice-level CIs treat slices as independent, which slices of one patient are
    not, so they are too narrow; the patient level is the one to quote.

    `external`, if given, is the external site's own metrics at these cut-offs
    (`common.evaluation.site_evaluation.read_site_report`): a lone site sends
    aggregates, not histograms, and they stand for the external split.
    """
    cuts = cutoffs(site_hist, level)
    threshold, slice_threshold = cuts[level], cuts["slice"]
    out: dict = {
        "level": level,
        "threshold": threshold,
        "threshold_split": CUTOFF_SPLIT,
        "slice_threshold": slice_threshold,
        "splits": {},
    }
    for split in SPLITS:
        if split == "external" and external is not None:
            out["splits"][split] = external
            continue
        pos, neg = pooled(site_hist, split, level)
        s_pos, s_neg = pooled(site_hist, split, "slice")
        out["splits"][split] = {
            **split_metrics(pos, neg, threshold),
            "n_patients": int(pos.sum() + neg.sum()),
            "n_slices": int(s_pos.sum() + s_neg.sum()),
            "slice_auc": auc_from_histograms(s_pos, s_neg),
            "slice_auc_ci": list(auc_ci_from_histograms(s_pos, s_neg)[1:]),
            "slice": split_metrics(s_pos, s_neg, slice_threshold),
        }
    return out

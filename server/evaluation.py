"""Pool sites' score histograms into the paper's table: AUC with DeLong 95% CI,
sensitivity and specificity with Wilson 95% CIs per split, at one cut-off chosen on
validation data (Youden's J) and applied unchanged to every split."""

from __future__ import annotations

import numpy as np

from common.metrics import (
    GRID_BINS,
    auc_ci_from_histograms,
    auc_from_histograms,
    operating_point,
    wilson_ci,
    youden_threshold,
)

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


def split_metrics(pos: np.ndarray, neg: np.ndarray, threshold: float) -> dict:
    """AUC with DeLong CI and the operating point at `threshold` with Wilson CIs."""
    auc, low, high = auc_ci_from_histograms(pos, neg)
    point = operating_point(pos, neg, threshold)
    return {
        "auc": auc,
        "auc_ci": [low, high],
        **point,
        "sensitivity_ci": list(wilson_ci(point["tp"], point["tp"] + point["fn"])),
        "specificity_ci": list(wilson_ci(point["tn"], point["tn"] + point["fp"])),
    }


def summarise(site_hist: dict, level: str = "patient") -> dict:
    """Metrics per split at `level` (patient by default), plus the slice level.

    Each level's cut-off comes from the validation split alone; on val itself the
    operating point is therefore optimistic, on train/test/external it is honest.
    Slice-level CIs treat slices as independent, which slices of one patient are
    not, so they are too narrow; the patient level is the one to quote.
    """
    val_pos, val_neg = pooled(site_hist, CUTOFF_SPLIT, level)
    threshold = youden_threshold(val_pos, val_neg)
    slice_threshold = youden_threshold(*pooled(site_hist, CUTOFF_SPLIT, "slice"))
    out: dict = {
        "level": level,
        "threshold": threshold,
        "threshold_split": CUTOFF_SPLIT,
        "slice_threshold": slice_threshold,
        "splits": {},
    }
    for split in SPLITS:
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

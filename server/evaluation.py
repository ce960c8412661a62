"""Pool sites' score histograms into the paper's table: AUC, sensitivity and
specificity per split, with the cut-off chosen on validation data (Youden's J)."""

from __future__ import annotations

import numpy as np

from common.metrics import auc_from_histograms, operating_point, youden_threshold

SPLITS = ("train", "val", "test", "external")


def pooled(site_hist: dict, split: str, level: str) -> tuple[np.ndarray, np.ndarray]:
    pos = sum(
        (
            h[f"{split}/{level}/pos"]
            for h in site_hist.values()
            if f"{split}/{level}/pos" in h
        ),
        np.zeros(1, np.int64),
    )
    neg = sum(
        (
            h[f"{split}/{level}/neg"]
            for h in site_hist.values()
            if f"{split}/{level}/neg" in h
        ),
        np.zeros(1, np.int64),
    )
    return np.asarray(pos), np.asarray(neg)


def summarise(site_hist: dict, level: str = "patient") -> dict:
    """Metrics per split at patient level, plus slice-level AUCs."""
    val_pos, val_neg = pooled(site_hist, "val", level)
    threshold = youden_threshold(val_pos, val_neg)
    out: dict = {"level": level, "threshold": threshold, "splits": {}}
    for split in SPLITS:
        pos, neg = pooled(site_hist, split, level)
        s_pos, s_neg = pooled(site_hist, split, "slice")
        out["splits"][split] = {
            "auc": auc_from_histograms(pos, neg),
            **operating_point(pos, neg, threshold),
            "n_patients": int(pos.sum() + neg.sum()),
            "n_slices": int(s_pos.sum() + s_neg.sum()),
            "slice_auc": auc_from_histograms(s_pos, s_neg),
        }
    return out

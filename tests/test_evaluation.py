"""The server's pooled evaluation: CIs per split, pooling across sites, and a
cut-off that comes from validation data only."""

import json

import numpy as np
import pytest

from common.evaluation.metrics import (
    auc_ci_from_histograms,
    histogram,
    operating_point,
    wilson_ci,
    youden_threshold,
)
from server.evaluation import SPLITS, pooled, summarise


def _scores(rng, split: str, n_pos: int, n_neg: int, shift: float) -> dict:
    """One site's histograms for one split: 3 slices per patient, patient = mean."""
    out = {}
    for label, n, centre in ((1, n_pos, 0.5 + shift), (0, n_neg, 0.5 - shift)):
        slices = rng.normal(centre, 0.35, (n, 3))
        key = "pos" if label else "neg"
        out[f"{split}/slice/{key}"] = histogram(slices.ravel())
        out[f"{split}/patient/{key}"] = histogram(slices.mean(axis=1))
    return out


def make_site_hist(seed: int = 0, shifts: dict | None = None) -> dict:
    """Two training sites (train/val/test) and one external site, as the server
    receives them from `_evaluate_all`."""
    shifts = {"train": 0.3, "val": 0.2, "test": 0.2, "external": 0.1, **(shifts or {})}
    rng = np.random.default_rng(seed)
    site_a, site_b = {}, {}
    sizes = {"train": (33, 33), "val": (4, 4), "test": (4, 5)}  # patients +, -
    for split, (n_pos, n_neg) in sizes.items():
        site_a |= _scores(rng, split, n_pos, n_neg, shifts[split])
        site_b |= _scores(rng, split, n_pos + 3, n_neg + 1, shifts[split])
    external = _scores(rng, "external", 15, 20, shifts["external"])
    return {11: site_a, 22: site_b, 33: external}


def test_every_split_has_auc_sensitivity_and_specificity_with_cis():
    metrics = summarise(make_site_hist())
    assert metrics["threshold_split"] == "val"
    for split in SPLITS:
        m = metrics["splits"][split]
        for key, value in (
            ("auc", m["auc"]),
            ("sensitivity", m["sensitivity"]),
            ("specificity", m["specificity"]),
        ):
            low, high = m[f"{key}_ci"]
            assert 0.0 <= low <= value <= high <= 1.0, (split, key)
        assert m["tp"] + m["fn"] + m["fp"] + m["tn"] == m["n_patients"]
        assert m["n_slices"] == 3 * m["n_patients"]
        assert m["slice_auc_ci"][0] <= m["slice_auc"] <= m["slice_auc_ci"][1]
        assert m["sensitivity_ci"] == list(wilson_ci(m["tp"], m["tp"] + m["fn"]))
        sl = m["slice"]  # the slice level, at its own validation cut-off
        assert sl["tp"] + sl["fn"] + sl["fp"] + sl["tn"] == m["n_slices"]
        assert sl["auc"] == pytest.approx(m["slice_auc"], abs=1e-12)
        assert sl["auc_ci"] == m["slice_auc_ci"]
        assert m["specificity_ci"] == list(wilson_ci(m["tn"], m["tn"] + m["fp"]))
    json.loads(json.dumps(metrics))  # metrics.json must hold it


def test_pooled_cis_are_computed_from_all_sites_counts():
    site_hist = make_site_hist(1)
    pos, neg = pooled(site_hist, "test", "patient")
    assert pos.sum() == 4 + 7 and neg.sum() == 5 + 6
    m = summarise(site_hist)["splits"]["test"]
    auc, low, high = auc_ci_from_histograms(pos, neg)
    assert (m["auc"], *m["auc_ci"]) == pytest.approx((auc, low, high))
    merged = {
        0: {
            k: sum(h[k] for h in site_hist.values() if k in h)
            for h in site_hist.values()
            for k in h
        }
    }
    assert summarise(merged) == summarise(site_hist)


def _with_split_from(base: dict, other: dict, split: str) -> dict:
    """`base` with one split's histograms taken from `other`."""
    return {
        node: {
            k: other[node][k] if k.startswith(f"{split}/") else v
            for k, v in hist.items()
        }
        for node, hist in base.items()
    }


def test_cut_off_comes_from_validation_only():
    base = make_site_hist(2)
    metrics = summarise(base)
    val_pos, val_neg = pooled(base, "val", "patient")
    assert metrics["threshold"] == youden_threshold(val_pos, val_neg)
    val_slices = pooled(base, "val", "slice")
    assert metrics["slice_threshold"] == youden_threshold(*val_slices)

    # change every other split's data: the cut-off must not move
    for split in ("train", "test", "external"):
        moved = _with_split_from(base, make_site_hist(2, {split: -0.3}), split)
        assert summarise(moved)["splits"][split] != metrics["splits"][split]
        for key in ("threshold", "slice_threshold"):
            assert summarise(moved)[key] == metrics[key], (split, key)
    # change validation data alone: it does move
    moved = _with_split_from(base, make_site_hist(9), "val")
    assert summarise(moved)["threshold"] != metrics["threshold"]
    assert summarise(moved)["slice_threshold"] != metrics["slice_threshold"]


def test_evaluated_sets_use_validations_cut_off_not_their_own():
    site_hist = make_site_hist(4)
    metrics = summarise(site_hist)
    for split in ("train", "test", "external"):
        pos, neg = pooled(site_hist, split, "patient")
        own = youden_threshold(pos, neg)
        assert own != metrics["threshold"], split  # the data make them differ
        at_val = operating_point(pos, neg, metrics["threshold"])
        m = metrics["splits"][split]
        assert {k: m[k] for k in at_val} == at_val, split
        s_pos, s_neg = pooled(site_hist, split, "slice")
        assert youden_threshold(s_pos, s_neg) != metrics["slice_threshold"], split
        at_val = operating_point(s_pos, s_neg, metrics["slice_threshold"])
        assert {k: m["slice"][k] for k in at_val} == at_val, split


def test_missing_external_site_gives_undefined_metrics_not_a_crash():
    site_hist = make_site_hist(5)
    del site_hist[33]
    m = summarise(site_hist)["splits"]["external"]
    assert m["n_patients"] == 0 and np.isnan(m["auc"]) and np.isnan(m["auc_ci"][0])
    assert all(np.isnan(m["sensitivity_ci"]))

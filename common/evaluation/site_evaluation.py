"""What a lone site releases about its own scores: aggregates, never the scores.

Training sites hide their score histograms in a SecAgg+ sum. A site evaluated on
its own (the external validation site) has nobody to hide among: even its fine
histogram would place each patient's score to 1/1000. So it computes its metrics
locally, from its fine histograms, at the cut-off the server chose on the pooled
validation data, and sends only:

- per level: AUC with DeLong 95% CI, sensitivity and specificity with Wilson
  95% CIs, and the confusion counts at that cut-off;
- per level and class: counts in coarse score bins (0.05 wide), from which the
  report draws a coarse ROC curve;
- the numbers of patients and slices.

The numbers equal what the server would compute from the fine histograms
(`split_metrics` is the one function both use).
"""

from __future__ import annotations

import numpy as np

from common.evaluation.feature_kinds import HEADS, MAIN, head_names
from common.evaluation.metrics import (
    GRID_BINS,
    GRID_HIGH,
    GRID_LOW,
    auc_ci_from_histograms,
    operating_point,
    wilson_ci,
)

LEVELS = ("patient", "slice")
COARSE_BLOCK = 50  # fine bins per coarse bin: 0.05 of score per bin
COARSE_BINS = GRID_BINS // COARSE_BLOCK
_COUNTS = ("tp", "fn", "fp", "tn")
_RATES = ("sensitivity", "specificity")


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


def coarsen(counts: np.ndarray) -> np.ndarray:
    """Fine-grid counts summed into COARSE_BINS bins of COARSE_BLOCK fine bins."""
    return np.asarray(counts, np.int64).reshape(COARSE_BINS, COARSE_BLOCK).sum(axis=1)


def coarse_edges() -> np.ndarray:
    """Edges of the coarse bins on the score axis."""
    return np.linspace(GRID_LOW, GRID_HIGH, COARSE_BINS + 1)


def site_report(hists: dict[str, np.ndarray], split: str, thresholds: dict) -> dict:
    """The flat record a lone site sends for `split`: see the module docstring.

    `hists` holds the site's fine histograms keyed "split/level/pos|neg";
    `thresholds` the server's cut-off per level. Values are floats, ints or lists
    of them, as a Flower record takes them.
    """
    out: dict = {}
    for level in LEVELS:
        pos, neg = hists[f"{split}/{level}/pos"], hists[f"{split}/{level}/neg"]
        m = split_metrics(pos, neg, float(thresholds[level]))
        out[f"{level}/auc"] = float(m["auc"])
        for key in ("auc_ci", "sensitivity_ci", "specificity_ci"):
            out[f"{level}/{key}"] = [float(v) for v in m[key]]
        for key in _RATES:
            out[f"{level}/{key}"] = float(m[key])
        for key in _COUNTS:
            out[f"{level}/{key}"] = int(m[key])
        out[f"{level}/coarse_pos"] = coarsen(pos).tolist()
        out[f"{level}/coarse_neg"] = coarsen(neg).tolist()
    return out


def report_keys() -> set[str]:
    """Every key `site_report` writes: what a message audit may let through."""
    per_level = (
        "auc",
        "auc_ci",
        "sensitivity_ci",
        "specificity_ci",
        *_RATES,
        *_COUNTS,
        "coarse_pos",
        "coarse_neg",
    )
    return {f"{level}/{key}" for level in LEVELS for key in per_level}


def read_site_report(record: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """A site report as the server's split metrics (the shape `summarise` gives a
    split) and its coarse histograms keyed "level/pos|neg".

    Raises ValueError naming the first key that is missing or malformed, so a
    broken reply stops the run with a reason instead of a wrong table.
    """
    missing = sorted(report_keys() - set(record))
    if missing:
        raise ValueError(f"site report lacks {missing[0]!r} ({len(missing)} missing)")

    def level_metrics(level: str) -> dict:
        m = {
            "auc": float(record[f"{level}/auc"]),
            "auc_ci": [float(v) for v in record[f"{level}/auc_ci"]],
        }
        m |= {k: float(record[f"{level}/{k}"]) for k in _RATES}
        m |= {k: int(record[f"{level}/{k}"]) for k in _COUNTS}
        for key in ("sensitivity_ci", "specificity_ci"):
            m[key] = [float(v) for v in record[f"{level}/{key}"]]
        for key in ("auc_ci", "sensitivity_ci", "specificity_ci"):
            if len(m[key]) != 2:
                raise ValueError(f"site report {level}/{key} is not a (low, high) pair")
        return m

    coarse = {}
    for level in LEVELS:
        for cls in ("pos", "neg"):
            counts = np.asarray(record[f"{level}/coarse_{cls}"], np.int64)
            if counts.shape != (COARSE_BINS,) or (counts < 0).any():
                raise ValueError(
                    f"site report {level}/coarse_{cls} must be {COARSE_BINS} "
                    "non-negative counts"
                )
            coarse[f"{level}/{cls}"] = counts
    patient, slices = level_metrics("patient"), level_metrics("slice")
    n_patients = sum(patient[k] for k in _COUNTS)
    n_slices = sum(slices[k] for k in _COUNTS)
    for level, n in (("patient", n_patients), ("slice", n_slices)):
        if int(coarse[f"{level}/pos"].sum() + coarse[f"{level}/neg"].sum()) != n:
            raise ValueError(
                f"site report {level}: coarse counts disagree with the confusion counts"
            )
    split = {
        **patient,
        "n_patients": n_patients,
        "n_slices": n_slices,
        "slice_auc": slices["auc"],
        "slice_auc_ci": slices["auc_ci"],
        "slice": slices,
    }
    return split, coarse


# ---- every head at once: the model's and the baselines' (feature_kinds.py)

PAIRED = "paired"  # record prefix of model-minus-baseline differences
PAIRED_KEYS = ("diff", "diff_ci", "p")


def _prefix(head: str) -> str:
    """The model's main head keeps the plain keys (one-head reports read the
    same); every other head's keys start with its name."""
    return "" if head == MAIN else f"{head}/"


def heads_report(
    hists: dict[str, dict[str, np.ndarray]],
    split: str,
    thresholds: dict[str, dict],
    paired: dict[str, dict],
) -> dict:
    """A lone site's record for every head: `site_report` per head (`hists`
    and `thresholds` keyed by head name) and, per baseline head, the paired
    DeLong difference model minus baseline on its patients (`paired`, keyed
    "kind-head": {"diff", "diff_ci", "p"}). Aggregates only."""
    out: dict = {}
    for head, h in hists.items():
        report = site_report(h, split, thresholds[head])
        out |= {f"{_prefix(head)}{k}": v for k, v in report.items()}
    for name, m in paired.items():
        out[f"{PAIRED}/{name}/patient/diff"] = float(m["diff"])
        out[f"{PAIRED}/{name}/patient/diff_ci"] = [float(v) for v in m["diff_ci"]]
        out[f"{PAIRED}/{name}/patient/p"] = float(m["p"])
    return out


def paired_names(kinds: tuple[str, ...]) -> list[str]:
    """The model-minus-baseline comparisons of `kinds`: like heads with like."""
    return [f"{kind}-{head}" for kind in kinds if kind != "model" for head in HEADS]


def heads_report_keys(kinds: tuple[str, ...]) -> set[str]:
    """Every key `heads_report` writes for `kinds` (what the audit lets out)."""
    keys = {f"{_prefix(h)}{k}" for h in head_names(kinds) for k in report_keys()}
    return keys | {
        f"{PAIRED}/{name}/patient/{k}"
        for name in paired_names(kinds)
        for k in PAIRED_KEYS
    }


def read_heads_report(
    record: dict, kinds: tuple[str, ...]
) -> tuple[dict[str, tuple[dict, dict]], dict[str, dict]]:
    """`heads_report` back: per head (split metrics, coarse histograms) as
    `read_site_report` gives them, and the paired differences by name."""
    heads = {}
    for head in head_names(kinds):
        prefix = _prefix(head)
        own = {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}
        try:
            heads[head] = read_site_report(own)
        except ValueError as err:
            raise ValueError(f"{head}: {err}") from None
    paired = {}
    for name in paired_names(kinds):
        base = f"{PAIRED}/{name}/patient/"
        missing = [k for k in PAIRED_KEYS if base + k not in record]
        if missing:
            raise ValueError(f"site report lacks {base + missing[0]!r}")
        ci = [float(v) for v in record[base + "diff_ci"]]
        if len(ci) != 2:
            raise ValueError(f"site report {base}diff_ci is not a (low, high) pair")
        paired[name] = {
            "diff": float(record[base + "diff"]),
            "diff_ci": ci,
            "p": float(record[base + "p"]),
        }
    return heads, paired

"""The report's figures: ROC curves per split from the pooled histograms (the
paper's Fig. 4) and the D/E/G losses per round (Fig. 3), as PNGs; no TensorFlow."""

from __future__ import annotations

from pathlib import Path

from common.evaluation.metrics import roc_from_histograms
from server.evaluation import SPLITS
from server.report_format import fmt_ci, fmt_pct, threshold_text, with_ci
from server.report_run import SPLIT_TITLES, RunContents, histogram, is_coarse


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(path: Path, run: RunContents, results: dict[str, dict]) -> bool:
    """2 x 2 ROC panels with AUC, CI and the validation cut-off marked.

    Returns False (and writes nothing) when the run kept no histograms.
    """
    level = run.metrics["level"]
    if all(histogram(run, s, level) is None for s in SPLITS):
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 10))
    for ax, split in zip(axes.ravel(), SPLITS, strict=True):
        m = results[split]
        counts = histogram(run, split, level)
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
        slices = histogram(run, split, "slice")
        if slices is not None and slices[0].sum() and slices[1].sum():
            fpr, tpr, _ = roc_from_histograms(*slices)
            ax.plot(fpr, tpr, color="0.55", lw=1, ls="--", label="slices")
        coarse = is_coarse(run, split)
        if counts is not None and counts[0].sum() and counts[1].sum():
            fpr, tpr, _ = roc_from_histograms(*counts)
            label = f"{level}s" + (" (coarse: 0.05 score bins)" if coarse else "")
            ax.plot(
                fpr, tpr, color="C0", lw=2, label=label, marker="." if coarse else None
            )
            x, y = 1 - m["specificity"], m["sensitivity"]
            ax.plot([x], [y], "o", color="C3", ms=8, label="cut-off from validation")
            ax.annotate(
                f"sens {fmt_pct(y)} {fmt_ci(m.get('sensitivity_ci'), fmt_pct)}\n"
                f"spec {fmt_pct(m['specificity'])} "
                f"{fmt_ci(m.get('specificity_ci'), fmt_pct)}",
                (x, y),
                # beside the point, turned inwards so it stays inside the axes
                xytext=(18 if x < 0.55 else -18, -48 if y > 0.35 else 40),
                textcoords="offset points",
                ha="left" if x < 0.55 else "right",
                va="center",
                fontsize=9,
                bbox={"boxstyle": "round", "fc": "white", "ec": "C3", "alpha": 0.9},
                arrowprops={"arrowstyle": "->", "color": "C3"},
            )
        else:
            ax.text(0.5, 0.5, "no cases of one class", ha="center", va="center")
        ax.set_title(
            f"{SPLIT_TITLES[split]}: AUC {with_ci(m, 'auc')}\n"
            f"{m.get('n_pos', 0)} positive, {m.get('n_neg', 0)} negative {level}s",
            fontsize=10,
        )
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
        ax.set(xlabel="1 − specificity", ylabel="sensitivity")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"ROC curves, {level} level (cut-off "
        f"{threshold_text(run.metrics['threshold'], short=True)}, "
        f"chosen on {run.metrics.get('threshold_split', 'val')})"
    )
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
    return True


def plot_losses(path: Path, rounds: list[dict], unit: str = "round") -> bool:
    """D, E and G losses per round (or per epoch of a central run: `unit`
    "epoch"), one panel each (their scales differ). False when there are none
    (no rounds, or DP on: sites send no losses)."""
    if not rounds or "d_loss" not in rounds[0]:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    x = [r[unit] for r in rounds]
    for ax, (key, name, colour) in zip(
        axes,
        (("d_loss", "D", "C0"), ("e_loss", "E", "C1"), ("g_loss", "G", "C2")),
        strict=True,
    ):
        ax.plot(x, [r[key] for r in rounds], marker="o", color=colour)
        ylabel = "mean over sites" if unit == "round" else "mean over steps"
        ax.set(title=f"{name} loss", xlabel=unit, ylabel=ylabel)
        if len(x) <= 12:  # whole rounds; longer runs keep matplotlib's ticks
            ax.set_xticks(x)
    where = "federated round" if unit == "round" else "epoch (central run)"
    fig.suptitle(f"BigBiGAN losses per {where}")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
    return True

"""`fedbigbigan report RUN_DIR`: one HTML page a clinician or reviewer can read.

It shows what the run directory holds, nothing more: ROC curves per split from the
pooled histograms with the validation cut-off marked (the paper's Fig. 4), the D/E/G
losses per round (Fig. 3), the paper-shaped AUC table with 95% CIs, the server's G(z)
samples and the run configuration. Figures are written as PNGs next to the page and
embedded in it as base64, so `report.html` alone can be mailed. No JavaScript, no
TensorFlow.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.evaluation.metrics import GRID_BINS, roc_from_histograms
from server.evaluation import SPLITS
from server.run_dir import HISTOGRAMS, PRIVACY_CURVE, RECONSTRUCTIONS, revive_json

log = logging.getLogger(__name__)

FIGURES = "report"  # folder inside the run directory for the report's PNGs
SPLIT_TITLES = {
    "train": "Training",
    "val": "Validation",
    "test": "Test",
    "external": "External site",
}
# Song et al. 2020 as summarised in docs/METHOD.md: centralised, no CIs given
PAPER_ROWS = (
    ("Linear (lm), centralised", (0.979, 0.968, 0.972, 0.850), (0.80, 0.75)),
    ("SVM, centralised", (1.000, 0.517, 0.531, 0.500), (None, None)),
    ("KNN, centralised", (None, 0.997, 0.998, 0.734), (None, None)),
)
SMALL_CLASS = 30  # fewer cases than this in a class: say the CIs are wide


@dataclass
class RunContents:
    """What a run directory holds, loaded once."""

    path: Path
    config: dict
    metrics: dict
    histograms: dict[str, np.ndarray] | None
    samples: list[Path]
    reconstructions: Path | None  # real slices and G(E(x)): simulations only


def load_run(run_dir: Path) -> RunContents:
    """Read config.json, metrics.json, histograms.npz and samples/ of a run."""
    run_dir = Path(run_dir)
    for name in ("config.json", "metrics.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir / name}: missing; is {run_dir} a run directory "
                "written by `fedbigbigan simulate` or the ServerApp?"
            )
    hist_path = run_dir / HISTOGRAMS
    histograms = None
    if hist_path.is_file():
        with np.load(hist_path) as npz:
            histograms = {k: npz[k] for k in npz.files}
    return RunContents(
        path=run_dir,
        config=json.loads((run_dir / "config.json").read_text()),
        metrics=revive_json(json.loads((run_dir / "metrics.json").read_text())),
        histograms=histograms,
        samples=sorted((run_dir / "samples").glob("round_*.png")),
        reconstructions=(
            run_dir / RECONSTRUCTIONS if (run_dir / RECONSTRUCTIONS).is_file() else None
        ),
    )


def _histogram(run: RunContents, split: str, level: str) -> tuple | None:
    """Pooled (pos, neg) counts, or None when the run kept no histograms."""
    key = f"{split}/{level}"
    if run.histograms is None or f"{key}/pos" not in run.histograms:
        return None
    return run.histograms[f"{key}/pos"], run.histograms[f"{key}/neg"]


def _is_coarse(run: RunContents, split: str) -> bool:
    """True when the split's counts are a lone site's coarse bins (the external
    site releases no fine histogram), so its curve is drawn as such."""
    return run.histograms is not None and f"{split}/coarse" in run.histograms


def split_results(run: RunContents) -> dict[str, dict]:
    """metrics.json per split, with the class sizes the tables show."""
    out = {}
    for split in SPLITS:
        m = dict(run.metrics["splits"].get(split, {}))
        counts = _histogram(run, split, run.metrics["level"])
        if counts is not None:
            m["n_pos"], m["n_neg"] = int(counts[0].sum()), int(counts[1].sum())
        elif "tp" in m:
            m["n_pos"], m["n_neg"] = m["tp"] + m["fn"], m["tn"] + m["fp"]
        out[split] = m
    return out


# ---------------------------------------------------------------- formatting


def _num(value, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{100 * value:.0f}%"


def _ci(pair, fmt=_num) -> str:
    if not pair or any(v is None or not np.isfinite(v) for v in pair):
        return ""
    return f"({fmt(pair[0])}–{fmt(pair[1])})"


def _with_ci(m: dict, key: str, fmt=_num) -> str:
    value = m.get(key)
    text = fmt(value)
    ci = _ci(m.get(f"{key}_ci"), fmt)
    return f"{text} {ci}".strip()


def _threshold_text(threshold: float, short: bool = False) -> str:
    """The cut-off; +inf means Youden's J found nothing better than "all negative"."""
    if threshold is None or np.isnan(threshold):
        return "undefined"
    if np.isinf(threshold):
        return (
            "∞"
            if short
            else ("∞ (no cut-off beat calling every case negative on validation)")
        )
    return f"{threshold:.3f}"


# ---------------------------------------------------------------- figures


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
    if all(_histogram(run, s, level) is None for s in SPLITS):
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 10))
    for ax, split in zip(axes.ravel(), SPLITS, strict=True):
        m = results[split]
        counts = _histogram(run, split, level)
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
        slices = _histogram(run, split, "slice")
        if slices is not None and slices[0].sum() and slices[1].sum():
            fpr, tpr, _ = roc_from_histograms(*slices)
            ax.plot(fpr, tpr, color="0.55", lw=1, ls="--", label="slices")
        coarse = _is_coarse(run, split)
        if counts is not None and counts[0].sum() and counts[1].sum():
            fpr, tpr, _ = roc_from_histograms(*counts)
            label = f"{level}s" + (" (coarse: 0.05 score bins)" if coarse else "")
            ax.plot(
                fpr, tpr, color="C0", lw=2, label=label, marker="." if coarse else None
            )
            x, y = 1 - m["specificity"], m["sensitivity"]
            ax.plot([x], [y], "o", color="C3", ms=8, label="cut-off from validation")
            ax.annotate(
                f"sens {_pct(y)} {_ci(m.get('sensitivity_ci'), _pct)}\n"
                f"spec {_pct(m['specificity'])} "
                f"{_ci(m.get('specificity_ci'), _pct)}",
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
            f"{SPLIT_TITLES[split]}: AUC {_with_ci(m, 'auc')}\n"
            f"{m.get('n_pos', 0)} positive, {m.get('n_neg', 0)} negative {level}s",
            fontsize=10,
        )
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
        ax.set(xlabel="1 − specificity", ylabel="sensitivity")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"ROC curves, {level} level (cut-off "
        f"{_threshold_text(run.metrics['threshold'], short=True)}, "
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


# ---------------------------------------------------------------- html

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em;
     margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; }
th { background: #f2f2f2; }
td { white-space: nowrap; }
td:first-child, th:first-child { text-align: left; white-space: normal;
                                 min-width: 12em; }
tr.reference td { color: #666; font-style: italic; }
.meta { color: #555; font-size: 0.92em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 0.9em;
        margin: 0.8em 0; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
img.samples { image-rendering: pixelated; width: 100%; max-width: 1000px; }
table.config td, table.config th { text-align: left; }
table.config td { font-family: ui-monospace, monospace; }
"""


def _img(png: bytes, alt: str, css_class: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{css_class}"' if css_class else ""
    return f'<img{klass} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(png: bytes, alt: str, caption: str, css_class: str = "") -> str:
    return (
        f"<figure>{_img(png, alt, css_class)}"
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _table(header: list[str], rows: list[list[str]], row_class=None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        klass = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(f"<td>{html.escape(str(c), quote=False)}</td>" for c in row)
        body.append(f"<tr{klass}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def paper_table(results: dict[str, dict]) -> str:
    """Classifier x split AUC (95% CI) and external sens/spec, as in the paper."""
    header = ["Classifier"] + [f"{SPLIT_TITLES[s]} AUC" for s in SPLITS]
    header += ["External sensitivity", "External specificity"]
    ext = results["external"]
    rows = [
        ["Linear (lm), federated — this run"]
        + [_with_ci(results[s], "auc") for s in SPLITS]
        + [_with_ci(ext, "sensitivity", _pct), _with_ci(ext, "specificity", _pct)]
    ]
    classes = [""]
    for name, aucs, (sens, spec) in PAPER_ROWS:
        rows.append(
            [f"{name} — Song et al. 2020 (reported)"]
            + [_num(a) for a in aucs]
            + [_pct(sens), _pct(spec)]
        )
        classes.append("reference")
    return _table(header, rows, classes)


def detail_table(results: dict[str, dict], level: str) -> str:
    """Every split's counts, AUCs and operating point with CIs."""
    header = [
        "Split",
        f"{level}s (+ / −)",
        "slices",
        f"AUC, {level}s (95% CI)",
        "sensitivity (95% CI)",
        "specificity (95% CI)",
        "TP / FN / FP / TN",
    ]
    rows = []
    for split in SPLITS:
        m = results[split]
        name = SPLIT_TITLES[split]
        if split == "val":
            name += " (cut-off chosen here: optimistic)"
        rows.append(
            [
                name,
                f"{m.get('n_patients', 0)} ({m.get('n_pos', '?')} / "
                f"{m.get('n_neg', '?')})",
                m.get("n_slices", "–"),
                _with_ci(m, "auc"),
                _with_ci(m, "sensitivity", _pct),
                _with_ci(m, "specificity", _pct),
                _counts(m),
            ]
        )
    return _table(header, rows)


def _counts(m: dict) -> str:
    """Confusion counts at the cut-off, or a dash when there is no operating point."""
    if "tp" not in m:
        return "–"
    return f"{m['tp']} / {m['fn']} / {m['fp']} / {m['tn']}"


def slice_table(results: dict[str, dict]) -> str:
    """The slice level: AUC, and the operating point at its own validation cut-off."""
    header = [
        "Split",
        "slices",
        "AUC (95% CI)",
        "sensitivity (95% CI)",
        "specificity (95% CI)",
        "TP / FN / FP / TN",
    ]
    rows = []
    for split in SPLITS:
        m = results[split]
        # runs written before the slice-level operating point: the AUC only
        sl = m.get("slice") or {
            "auc": m.get("slice_auc"),
            "auc_ci": m.get("slice_auc_ci"),
        }
        name = SPLIT_TITLES[split]
        if split == "val" and "tp" in sl:
            name += " (cut-off chosen here: optimistic)"
        rows.append(
            [
                name,
                m.get("n_slices", "–"),
                _with_ci(sl, "auc"),
                _with_ci(sl, "sensitivity", _pct),
                _with_ci(sl, "specificity", _pct),
                _counts(sl),
            ]
        )
    return _table(header, rows)


def _notes(run: RunContents, results: dict[str, dict]) -> str:
    """Plain-language cautions a reader needs before quoting a number."""
    level = run.metrics["level"]
    notes = [
        f"One cut-off, {html.escape(_threshold_text(run.metrics['threshold']))}, "
        "was chosen on the validation split by Youden's J (the score that "
        "maximises sensitivity + specificity - 1) and applied unchanged to "
        "the other splits; only the validation row's sensitivity and specificity "
        "were measured on the data that chose it.",
        "Training sites returned per-class histograms of their scores on a "
        f"{GRID_BINS}-bin grid, not lists of scores, through a SecAgg+ round: the "
        "server saw only their sum, and computed the curves, AUCs and DeLong "
        "intervals from the pooled counts (exactly as from the binned scores). "
        "The external site, alone in its role, has no sum to hide in (with few "
        "patients a fine grid would locate each one's score), so it computed its "
        "own AUC, intervals and confusion counts at the validation cut-off and "
        "sent only those and coarse counts (0.05-wide score bins), from which its "
        "ROC curve is drawn.",
    ]
    small = [
        f"{SPLIT_TITLES[s].lower()} ({results[s].get('n_pos', '?')} positive, "
        f"{results[s].get('n_neg', '?')} negative)"
        for s in SPLITS
        if min(results[s].get("n_pos", 0), results[s].get("n_neg", 0)) < SMALL_CLASS
    ]
    if small:
        notes.append(
            f"Few {level}s in " + ", ".join(small) + ": the 95% intervals are wide, "
            "and an AUC of exactly 1 or 0 gets a DeLong interval of zero width, "
            "which is a limit of the method, not certainty."
        )
    return "".join(f'<p class="note">{n}</p>' for n in notes)


def _config_table(config: dict) -> str:
    rows = [[str(k), json.dumps(v)] for k, v in config.items()]
    return _table(["key", "value"], rows).replace("<table>", '<table class="config">')


def render_html(run: RunContents, figures: dict[str, bytes]) -> str:
    """The page; `figures` maps a figure's name to its PNG bytes."""
    results = split_results(run)
    level = run.metrics["level"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fedbigbigan report: {html.escape(run.path.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Federated BigBiGAN COVID-19 classifier: run report</h1>",
        f'<p class="meta">Run directory <code>{html.escape(str(run.path))}</code>; '
        f"report written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"preset <code>{html.escape(str(run.config.get('preset', '?')))}</code>, "
        f"{len(run.metrics.get('rounds', []))} BigBiGAN rounds, "
        f"{run.metrics.get('secagg_rounds', '?')} secure aggregation rounds in "
        "all (secure aggregation: each site masks the numbers it sends so that "
        "the server can add them up but never sees one site's own).</p>",
        data_note(run.metrics),
        *verdict_section(run.metrics),
        "<h2>Results in the paper's shape</h2>",
        f"<p>AUC at {level} level with DeLong 95% CI (DeLong's method: a "
        "confidence interval for an AUC from how each case ranks against the "
        "other class, no distribution assumed); external sensitivity and "
        "specificity at the validation cut-off with Wilson 95% CIs. The paper's rows "
        "are its reported centralised numbers on its own data (no CIs were given), "
        "shown for orientation, not as a like-for-like comparison.</p>",
        paper_table(results),
        _notes(run, results),
        *baseline_section(run.metrics),
        f"<h2>All splits, {level} level</h2>",
        detail_table(results, level),
        "<h2>Slice level</h2>",
        "<p>Every slice scored on its own, at a cut-off chosen on validation slices "
        f"({html.escape(_threshold_text(run.metrics.get('slice_threshold')))}). "
        "Slices of one patient are correlated, so these intervals are too narrow; "
        f"quote the {level} level.</p>",
        slice_table(results),
        *comparison_section(run.metrics.get("comparisons")),
        *privacy_section(run, figures),
        "<h2>ROC curves</h2>",
    ]
    if "roc" in figures:
        parts.append(
            _figure(
                figures["roc"],
                "ROC curves for training, validation, test and external data",
                f"Solid: {level} level (mean of a {level}'s slice scores); dashed: "
                "slice level. Red dot: the operating point at the cut-off chosen on "
                "validation data, with sensitivity and specificity (Wilson 95% CI).",
            )
        )
    else:
        parts.append(
            "<p>This run directory keeps no pooled histograms "
            f"(<code>{HISTOGRAMS}</code>), so the curves cannot be drawn; it was "
            "written before the report existed. Re-run to get them.</p>"
        )
    parts.append("<h2>Training losses</h2>")
    if "losses" in figures:
        parts.append(
            _figure(
                figures["losses"],
                "D, E and G losses per round",
                "Hinge losses of the discriminator D, encoder E and generator G, "
                "averaged over the training sites after each round's local epochs.",
            )
        )
    else:
        parts.append(
            "<p>No losses: no BigBiGAN rounds in this run (encoder not trained), "
            "or differential privacy was on (sites then send no per-site losses, "
            "which the noise would not cover).</p>"
        )
    parts.append("<h2>Generator samples G(z)</h2>")
    sample_names = [k for k in figures if k.startswith("samples/")]
    if sample_names:
        parts.append(
            "<p>The same eight latent vectors z after the last and the first round. "
            "G(z) holds no patient data, so the server may draw it.</p>"
        )
        for name in sample_names:
            rnd = int(name.split("_")[-1].split(".")[0])
            parts.append(
                _figure(
                    figures[name],
                    f"G(z) after round {rnd}",
                    f"After round {rnd}.",
                    "samples",
                )
            )
    else:
        parts.append("<p>No samples were saved in this run.</p>")
    parts += _reconstruction_section(run, figures)
    parts += [
        "<h2>Configuration</h2>",
        f"<p>From <code>config.json</code>; the cut-off source split is "
        f"<code>{html.escape(run.metrics.get('threshold_split', 'val'))}</code>.</p>",
        _config_table(run.config),
        "</body></html>",
    ]
    return "\n".join(parts)


def _reconstruction_section(run: RunContents, figures: dict[str, bytes]) -> list[str]:
    """Real slices and G(E(x)): present only for a simulated run."""
    parts = ["<h2>Real slices and reconstructions G(E(x))</h2>"]
    if "reconstructions" not in figures:
        return parts + [
            "<p>Real slices show patients, so a federated run's server never has "
            "them. Each hospital can draw its own grid, on its own machine: "
            "<code>fedbigbigan reconstruct --model RUN_DIR --dicom DIR --out "
            "grid.png</code>.</p>"
        ]
    sites = ", ".join(
        html.escape(name) for name, _ in RunConfig.from_flat(run.config).site_roster()
    )
    return parts + [
        "<p>Simulation only (a simulation holds every site's slices): for each "
        f"site in turn ({sites}), the middle slice of a few held-out patients, "
        "and below them their reconstructions by the final G and E. What survives "
        "the round trip is what the 120-d code keeps.</p>",
        _figure(
            figures["reconstructions"],
            "real slices and their reconstructions G(E(x)), per site",
            "Rows in pairs per site, each labelled on its left: the site's real "
            'slices at G\'s resolution ("SITE: real"), then their '
            'reconstructions ("SITE: G(E(x))").',
            "samples",
        ),
    ]


PARTS_TEXT = {
    "egd": "E, G and D",
    "eg": "E and G (D stayed at each site)",
    "e": "E only (G and D stayed at each site)",
}
# metrics["secure_aggregation"]: the protocol that masked every update
_PROTOCOLS = {"secaggplus": "Flower's SecAgg+", "fedbigbigan": "our secure aggregation"}


def _privacy_curve(run: RunContents) -> tuple[list[dict], Path] | None:
    """The privacy curve this run belongs to (its folder or its parent's)."""
    for folder in (run.path, run.path.parent):
        if (folder / PRIVACY_CURVE).is_file():
            rows = revive_json(json.loads((folder / PRIVACY_CURVE).read_text()))
            return rows, folder / "privacy_curve.png"
    return None


def privacy_section(run: RunContents, figures: dict[str, bytes]) -> list[str]:
    """What left the sites, the DP guarantee, and the membership attacks."""
    m = run.metrics
    parts = ["<h2>Privacy</h2>"]
    shared = PARTS_TEXT.get(m.get("federated_parts", "egd"), "E, G and D")
    payload = m.get("payload")
    protocol = _PROTOCOLS.get(m.get("secure_aggregation", "secaggplus"), "SecAgg+")
    sent = (
        f" Per site and BigBiGAN round: {payload['down_bytes'] / 1e6:.1f} MB down "
        f"({payload.get('down_dtype', 'float32')}), "
        f"{payload['up_bytes'] / 1e6:.1f} MB up "
        f"(masks as {payload.get('up_dtype', 'int64')})."
        if payload
        else ""
    )
    parts.append(
        f"<p>Weights federated in the BigBiGAN rounds: {html.escape(shared)}; every "
        f"update masked by {protocol}, so the server saw only sums." + sent + "</p>"
    )
    dp = m.get("dp")
    if dp and dp.get("on"):
        parts.append(
            f"<p>Differential privacy (site level): each site clipped its update "
            f"to L2 norm {dp['clip']:g} and added Gaussian noise (noise multiplier "
            f"{dp['noise_multiplier']:g}) before masking: "
            f"(&epsilon;, &delta;) = ({dp['epsilon']:.3g}, {dp['delta']:g}) over "
            f"{dp['rounds']} rounds (RDP accountant). Scope: "
            f"{html.escape(dp['scope'])}.</p>"
        )
    elif dp:
        parts.append(
            "<p>Differential privacy was off: &epsilon; = &infin;, i.e. no formal "
            "guarantee beyond secure aggregation (set "
            "<code>dp-noise-multiplier</code>).</p>"
        )
    attack = m.get("membership_inference")
    if attack:
        disc = attack.get("discriminator_attack_auc")
        parts.append(
            "<p>Membership-inference smoke test (simulation only; 0.5 = no better "
            f"than chance): threshold attack on the head's error AUC "
            f"{_num(attack['head_attack_auc'])}"
            + (f", on D's score AUC {_num(disc)}" if disc is not None else "")
            + f" ({attack['n_members']} member vs {attack['n_nonmembers']} "
            "non-member slices of the training sites).</p>"
        )
    curve = _privacy_curve(run)
    if curve is not None:
        rows, png = curve
        table = _table(
            ["run", "noise", "epsilon", "external AUC", "attack (head)"],
            [
                [
                    html.escape(r["run"]),
                    f"{r['noise_multiplier']:g}",
                    "∞" if not np.isfinite(r["epsilon"]) else f"{r['epsilon']:.3g}",
                    f"{_num(r['external_auc'])} {_ci(r['external_auc_ci'])}",
                    _num(r["head_attack_auc"]),
                ]
                for r in rows
            ],
        )
        parts += ["<h3>Privacy against utility</h3>", table]
        if png.is_file():
            figures["privacy_curve"] = png.read_bytes()
            parts.append(
                _figure(
                    figures["privacy_curve"],
                    "external AUC and attack AUCs against epsilon",
                    "The same simulated study at several noise levels "
                    "(fedbigbigan privacy-curve).",
                )
            )
    return parts


def comparison_section(comparisons: dict | None) -> list[str]:
    """Heads x test data (simulation only): what federation bought."""
    if not comparisons:
        return []
    table = comparisons["table"]
    targets = list(next(iter(table.values())))
    head = "".join(f"<th>{html.escape(t)}</th>" for t in targets)
    rows = []
    for name, row in table.items():
        cells = "".join(
            f"<td>{_num(row[t]['auc'])} {_ci(row[t]['ci'])}</td>" for t in targets
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    general = ", ".join(
        f"{html.escape(site)} {_num(auc)}"
        for site, auc in comparisons.get("generalisability", {}).items()
    )
    return [
        "<h2>Federated, pooled and local heads (simulation only)</h2>",
        "<p>Patient-level AUC with DeLong 95% CI of heads fitted on the federated "
        "encoder's features: the SecAgg+ head, heads fitted on all training sites' "
        "data pooled (lm, and the paper's SVM and KNN, which cannot be fitted from "
        "pooled statistics), and each site's own head. Only a simulation holds "
        "every site's data, so only it can compute these rows; they are not "
        "federated. Mean AUC of each local head on the other sites' test data "
        f"(EXAM-style generalisability): {general or 'n/a'}.</p>",
        f"<table><tr><th>head</th>{head}</tr>{''.join(rows)}</table>",
    ]


# ---------------------------------------------------------------- baselines

BASELINE_TITLES = {
    "radiomics": "a histogram of intensities (first-order radiomics)",
    "untrained": "the untrained encoder",
}
HEAD_TITLES = {
    "model": "BigBiGAN features",
    "radiomics": "first-order radiomics",
    "untrained": "untrained encoder",
}


def data_note(metrics: dict) -> str:
    """What the data were: a simulation records its sites; a deployment's
    server never sees them, so it says that instead."""
    data = metrics.get("data")
    if data is None:
        return (
            '<p class="note">Data: not recorded by the run (a deployment: each '
            "site's own data, which the server never sees).</p>"
        )
    if data.get("synthetic"):
        return (
            '<p class="note"><b>These data are synthetic.</b> The sites are '
            "phantoms generated by <code>fedbigbigan phantoms</code> (scenario "
            f"<code>{html.escape(str(data.get('scenario')))}</code>), not CT "
            "scans of patients: the numbers below test the software, they say "
            "nothing about COVID-19 diagnosis, and the paper's numbers (real CT) "
            "are not a target a phantom run should be held against.</p>"
        )
    return (
        '<p class="note">Data: image folders linked into a simulation (scenario '
        f"<code>{html.escape(str(data.get('scenario')))}</code>).</p>"
    )


def _ci_includes_half(m: dict) -> bool:
    ci = m.get("auc_ci") or [np.nan, np.nan]
    return bool(np.isfinite(ci).all() and ci[0] <= 0.5 <= ci[1])


def verdicts(metrics: dict) -> list[str]:
    """One plain-language line per split: the model (lm head) against chance
    and against each baseline's lm head (paired DeLong at the external site,
    where one site holds both scores of the same patients)."""
    baselines = metrics.get("baselines") or {}
    lines = []
    for split in SPLITS:
        m = metrics["splits"].get(split) or {}
        auc = m.get("auc")
        if auc is None or not np.isfinite(auc):
            lines.append(f"{SPLIT_TITLES[split]}: no AUC (one class missing).")
            continue
        parts = [f"AUC {_num(auc)} {_ci(m.get('auc_ci'))}".strip()]
        if _ci_includes_half(m):
            parts.append("near chance (its 95% CI includes 0.5)")
        for kind, title in BASELINE_TITLES.items():
            base = (baselines.get(kind) or {}).get("lm", {}).get("splits", {})
            other = (base.get(split) or {}).get("auc")
            if other is None or not np.isfinite(other):
                continue
            paired = None
            if split == "external":
                paired = (baselines[kind].get("external_difference") or {}).get("lm")
            if auc <= other:
                text = f"not better than {title} ({_num(other)})"
            elif paired and paired["diff_ci"][0] > 0:
                text = (
                    f"better than {title} ({_num(other)}; paired difference "
                    f"{paired['diff']:+.3f} {_ci(paired['diff_ci'])}, "
                    f"p = {paired['p']:.2g})"
                )
            elif paired:
                text = (
                    f"above {title} ({_num(other)}) but not significantly "
                    f"(paired difference {paired['diff']:+.3f} "
                    f"{_ci(paired['diff_ci'])} includes 0)"
                )
            else:
                text = f"above {title} ({_num(other)}; no paired test on this split)"
            parts.append(text)
        lines.append(f"{SPLIT_TITLES[split]}: " + "; ".join(parts) + ".")
    return lines


def verdict_section(metrics: dict) -> list[str]:
    if not metrics.get("baselines"):
        return []
    items = "".join(f"<li>{html.escape(line)}</li>" for line in verdicts(metrics))
    return [
        "<h2>In plain words</h2>",
        "<p>The federated model (BigBiGAN features, lm head), split by split, "
        "against chance and against two baselines fitted with the same secure "
        "rounds and head:</p>",
        f"<ul>{items}</ul>",
    ]


def _head_rows(metrics: dict) -> list[tuple[str, str, str, dict, dict | None]]:
    """(kind, head, name, summary, paired difference) for every head run."""
    rows = [("model", "lm", "model-lm", metrics, None)]
    if metrics.get("model_ridge"):
        rows.append(("model", "ridge", "model-ridge", metrics["model_ridge"], None))
    for kind, entry in (metrics.get("baselines") or {}).items():
        for head in ("lm", "ridge"):
            if head in entry:
                paired = (entry.get("external_difference") or {}).get(head)
                rows.append((kind, head, f"{kind}-{head}", entry[head], paired))
    return rows


def baseline_section(metrics: dict) -> list[str]:
    """Every head on every split, with the external paired differences."""
    if not metrics.get("baselines"):
        return []
    lambdas = metrics.get("ridge") or {}
    header = ["Features, head"] + [f"{SPLIT_TITLES[s]} AUC" for s in SPLITS]
    header.append("External: model minus this (paired DeLong 95% CI, p)")
    rows = []
    for kind, head, _, summary, paired in _head_rows(metrics):
        name = f"{HEAD_TITLES.get(kind, kind)}, {head}"
        if head == "ridge" and kind in lambdas:
            name += f" (λ = {lambdas[kind]['lambda']:.3g})"
        cells = [_with_ci(summary["splits"].get(s, {}), "auc") for s in SPLITS]
        diff = "–"
        if paired and np.isfinite(paired["diff"]):
            diff = (
                f"{paired['diff']:+.3f} {_ci(paired['diff_ci'])}, p {paired['p']:.2g}"
            )
        rows.append([name, *cells, diff])
    return [
        "<h2>Baselines: the same rounds on simpler features</h2>",
        "<p>Patient-level AUC (DeLong 95% CI) of the same linear heads, fitted "
        "with the same secure rounds and evaluated on the same splits at their "
        "own validation cut-offs, on three kinds of slice features: the "
        "federated encoder's, first-order radiomics of the slice (an intensity "
        "histogram and its statistics inside the body, in HU), and the encoder "
        "at its initial (untrained) weights. lm is the paper's least squares; "
        "ridge shrinks it, with λ chosen where the scores correlate best with "
        "the label on the validation patients (its scores rescaled to the "
        "label's scale: same ranking). The last column is computed at "
        "the external site, which holds both scores of the same patients, and "
        "sent as the difference, its CI and p only.</p>",
        _table(header, rows),
    ]


def baseline_lines(metrics: dict) -> list[str]:
    """The heads' patient AUCs as short text lines (`fedbigbigan simulate`)."""
    if not metrics.get("baselines"):
        return []
    lines = ["heads (patient AUC; external: model minus baseline, paired DeLong):"]
    for _, _, name, summary, paired in _head_rows(metrics)[1:]:
        aucs = "  ".join(
            f"{s} {_num(summary['splits'].get(s, {}).get('auc'))}" for s in SPLITS
        )
        line = f"  {name:16s} {aucs}"
        if paired and np.isfinite(paired["diff"]):
            line += f"  diff {paired['diff']:+.3f} {_ci(paired['diff_ci'])}"
        lines.append(line)
    return lines + verdicts(metrics)


def write_report(run_dir: Path) -> Path:
    """Write RUN_DIR/report.html and its PNGs in RUN_DIR/report/; return the page."""
    run = load_run(Path(run_dir))
    fig_dir = run.path / FIGURES
    fig_dir.mkdir(exist_ok=True)
    results = split_results(run)
    figures: dict[str, bytes] = {}
    if plot_roc(fig_dir / "roc_curves.png", run, results):
        figures["roc"] = (fig_dir / "roc_curves.png").read_bytes()
    if plot_losses(fig_dir / "loss_curves.png", run.metrics.get("rounds", [])):
        figures["losses"] = (fig_dir / "loss_curves.png").read_bytes()
    # the last round shows what training reached, the first where it started
    for sample in dict.fromkeys([*run.samples[-1:], *run.samples[:1]]):
        figures[f"samples/{sample.name}"] = sample.read_bytes()
    if run.reconstructions is not None:
        figures["reconstructions"] = run.reconstructions.read_bytes()
    page = run.path / "report.html"
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(render_html(run, figures), encoding="utf-8")
    tmp.replace(page)
    log.info("report: %s", page)
    return page

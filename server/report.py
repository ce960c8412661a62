"""`fedbigbigan report RUN_DIR`: one HTML page a clinician or reviewer can read.

It shows what the run directory holds, nothing more: ROC curves per split from the
pooled histograms with the validation cut-off marked (the paper's Fig. 4), the D/E/G
losses per round (Fig. 3), the paper-shaped AUC table with 95% CIs, the server's G(z)
samples and the run configuration. Figures are written as PNGs next to the page and
embedded in it as base64, so `report.html` alone can be mailed. No JavaScript, no
TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from pathlib import Path

from common.config import RunConfig
from common.evaluation.metrics import GRID_BINS
from server.evaluation import SPLITS
from server.report_figures import plot_losses, plot_roc
from server.report_format import (
    fmt_num,
    fmt_pct,
    html_figure,
    html_table,
    threshold_text,
    with_ci,
)
from server.report_run import SPLIT_TITLES, RunContents, load_run, split_results
from server.report_sections import (
    baseline_section,
    comparison_section,
    data_note,
    privacy_section,
    verdict_section,
)
from server.run_dir import HISTOGRAMS

log = logging.getLogger(__name__)


FIGURES = "report"  # folder inside the run directory for the report's PNGs
# Song et al. 2020 as summarised in docs/METHOD.md: centralised, no CIs given
PAPER_ROWS = (
    ("Linear (lm), centralised", (0.979, 0.968, 0.972, 0.850), (0.80, 0.75)),
    ("SVM, centralised", (1.000, 0.517, 0.531, 0.500), (None, None)),
    ("KNN, centralised", (None, 0.997, 0.998, 0.734), (None, None)),
)
SMALL_CLASS = 30  # fewer cases than this in a class: say the CIs are wide


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


def paper_table(results: dict[str, dict]) -> str:
    """Classifier x split AUC (95% CI) and external sens/spec, as in the paper."""
    header = ["Classifier"] + [f"{SPLIT_TITLES[s]} AUC" for s in SPLITS]
    header += ["External sensitivity", "External specificity"]
    ext = results["external"]
    rows = [
        ["Linear (lm), federated — this run"]
        + [with_ci(results[s], "auc") for s in SPLITS]
        + [with_ci(ext, "sensitivity", fmt_pct), with_ci(ext, "specificity", fmt_pct)]
    ]
    classes = [""]
    for name, aucs, (sens, spec) in PAPER_ROWS:
        rows.append(
            [f"{name} — Song et al. 2020 (reported)"]
            + [fmt_num(a) for a in aucs]
            + [fmt_pct(sens), fmt_pct(spec)]
        )
        classes.append("reference")
    return html_table(header, rows, classes)


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
                with_ci(m, "auc"),
                with_ci(m, "sensitivity", fmt_pct),
                with_ci(m, "specificity", fmt_pct),
                _counts(m),
            ]
        )
    return html_table(header, rows)


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
                with_ci(sl, "auc"),
                with_ci(sl, "sensitivity", fmt_pct),
                with_ci(sl, "specificity", fmt_pct),
                _counts(sl),
            ]
        )
    return html_table(header, rows)


def _notes(run: RunContents, results: dict[str, dict]) -> str:
    """Plain-language cautions a reader needs before quoting a number."""
    level = run.metrics["level"]
    notes = [
        f"One cut-off, {html.escape(threshold_text(run.metrics['threshold']))}, "
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
    return html_table(["key", "value"], rows).replace(
        "<table>", '<table class="config">'
    )


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
        f"({html.escape(threshold_text(run.metrics.get('slice_threshold')))}). "
        "Slices of one patient are correlated, so these intervals are too narrow; "
        f"quote the {level} level.</p>",
        slice_table(results),
        *comparison_section(run.metrics.get("comparisons")),
        *privacy_section(run, figures),
        "<h2>ROC curves</h2>",
    ]
    if "roc" in figures:
        parts.append(
            html_figure(
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
            html_figure(
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
                html_figure(
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
        html_figure(
            figures["reconstructions"],
            "real slices and their reconstructions G(E(x)), per site",
            "Rows in pairs per site, each labelled on its left: the site's real "
            'slices at G\'s resolution ("SITE: real"), then their '
            'reconstructions ("SITE: G(E(x))").',
            "samples",
        ),
    ]


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

"""The report's sections about a run beyond its own curves: privacy (what left
the sites, DP, membership attacks), the comparisons, the baselines and a
plain-language verdict per split."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from server.evaluation import SPLITS
from server.report_format import fmt_ci, fmt_num, html_figure, html_table, with_ci
from server.report_run import SPLIT_TITLES, RunContents
from server.run_dir import PRIVACY_CURVE, revive_json

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
            f"{fmt_num(attack['head_attack_auc'])}"
            + (f", on D's score AUC {fmt_num(disc)}" if disc is not None else "")
            + f" ({attack['n_members']} member vs {attack['n_nonmembers']} "
            "non-member slices of the training sites).</p>"
        )
    curve = _privacy_curve(run)
    if curve is not None:
        rows, png = curve
        table = html_table(
            ["run", "noise", "epsilon", "external AUC", "attack (head)"],
            [
                [
                    html.escape(r["run"]),
                    f"{r['noise_multiplier']:g}",
                    "∞" if not np.isfinite(r["epsilon"]) else f"{r['epsilon']:.3g}",
                    f"{fmt_num(r['external_auc'])} {fmt_ci(r['external_auc_ci'])}",
                    fmt_num(r["head_attack_auc"]),
                ]
                for r in rows
            ],
        )
        parts += ["<h3>Privacy against utility</h3>", table]
        if png.is_file():
            figures["privacy_curve"] = png.read_bytes()
            parts.append(
                html_figure(
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
            f"<td>{fmt_num(row[t]['auc'])} {fmt_ci(row[t]['ci'])}</td>" for t in targets
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    general = ", ".join(
        f"{html.escape(site)} {fmt_num(auc)}"
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
        parts = [f"AUC {fmt_num(auc)} {fmt_ci(m.get('auc_ci'))}".strip()]
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
                text = f"not better than {title} ({fmt_num(other)})"
            elif paired and paired["diff_ci"][0] > 0:
                text = (
                    f"better than {title} ({fmt_num(other)}; paired difference "
                    f"{paired['diff']:+.3f} {fmt_ci(paired['diff_ci'])}, "
                    f"p = {paired['p']:.2g})"
                )
            elif paired:
                text = (
                    f"above {title} ({fmt_num(other)}) but not significantly "
                    f"(paired difference {paired['diff']:+.3f} "
                    f"{fmt_ci(paired['diff_ci'])} includes 0)"
                )
            else:
                text = f"above {title} ({fmt_num(other)}; no paired test on this split)"
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
        cells = [with_ci(summary["splits"].get(s, {}), "auc") for s in SPLITS]
        diff = "–"
        if paired and np.isfinite(paired["diff"]):
            diff = (
                f"{paired['diff']:+.3f} {fmt_ci(paired['diff_ci'])}, "
                f"p {paired['p']:.2g}"
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
        html_table(header, rows),
    ]


def baseline_lines(metrics: dict) -> list[str]:
    """The heads' patient AUCs as short text lines (`fedbigbigan simulate`)."""
    if not metrics.get("baselines"):
        return []
    lines = ["heads (patient AUC; external: model minus baseline, paired DeLong):"]
    for _, _, name, summary, paired in _head_rows(metrics)[1:]:
        aucs = "  ".join(
            f"{s} {fmt_num(summary['splits'].get(s, {}).get('auc'))}" for s in SPLITS
        )
        line = f"  {name:16s} {aucs}"
        if paired and np.isfinite(paired["diff"]):
            line += f"  diff {paired['diff']:+.3f} {fmt_ci(paired['diff_ci'])}"
        lines.append(line)
    return lines + verdicts(metrics)

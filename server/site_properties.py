"""The sites' answers to the first query, beyond role and size: refusals of
sites that cannot take part (the same check `simulate` makes before Flower,
here for a deployment too) and one shortcut warning line per site."""

from __future__ import annotations

from common.ingest.shortcuts import SHORTCUT_NAMES, WARN_AUC
from common.ingest.site_checks import (
    NEG,
    POS,
    SHORTCUT_ATTRIBUTE,
    SHORTCUT_AUC,
    site_problem,
)


def site_refusals(
    roles: dict[int, tuple[str, int]], props: dict[int, dict], min_per_class: int
) -> list[str]:
    """One line per site that lacks a class or patients of one (sites that did
    not report counts, e.g. an older ClientApp, are not checked here)."""
    lines = []
    for node, (role, _) in sorted(roles.items()):
        p = props.get(node) or {}
        if POS not in p or NEG not in p:
            continue
        counts = {1: int(p[POS]), 0: int(p[NEG])}
        line = site_problem(f"node {node}", role, counts, min_per_class)
        if line:
            lines.append(line)
    return lines


def site_shortcuts(
    roles: dict[int, tuple[str, int]], props: dict[int, dict]
) -> list[dict]:
    """Each reporting site's strongest shortcut AUC and its attribute."""
    out = []
    for node, (role, _) in sorted(roles.items()):
        p = props.get(node) or {}
        if SHORTCUT_AUC not in p:
            continue
        index = int(p.get(SHORTCUT_ATTRIBUTE, -1))
        name = SHORTCUT_NAMES[index] if 0 <= index < len(SHORTCUT_NAMES) else "?"
        out.append(
            {
                "site": f"node {node}",
                "role": role,
                "auc": float(p[SHORTCUT_AUC]),
                "attribute": name,
            }
        )
    return out


def shortcut_lines(metrics: dict) -> list[str]:
    """One warning line per site whose file metadata predicts its labels."""
    return [
        f"warning: site {s['site']} ({s['role']}): shortcut: file metadata alone "
        f"predicts the label (AUC {s['auc']:.2f}, {s['attribute']}); the model "
        "may learn it instead of the lungs (see the site's ingest report)"
        for s in metrics.get("site_shortcuts") or []
        if s["auc"] >= WARN_AUC
    ]

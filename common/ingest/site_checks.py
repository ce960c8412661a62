"""Can a site take part? Both classes, and enough patients of each, before any round.

A training site with one class cannot fit a head (and its rounds fail deep in a
ClientApp); the external site needs both classes for an AUC. Checked once per
site from its ingested patients, so a run is refused up front with one line per
site instead of dropping sites mid-run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

CLASS_NAMES = {1: "COVID-19", 0: "other pneumonia"}


def class_counts(labels: Iterable[int]) -> dict[int, int]:
    """Patients per class (0 and 1 always present)."""
    counts = Counter(int(label) for label in labels)
    return {0: counts.get(0, 0), 1: counts.get(1, 0)}


def site_problem(
    name: str, role: str, counts: dict[int, int], min_per_class: int
) -> str | None:
    """One line saying why a site cannot take part, or None when it can.

    Training sites need `min_per_class` patients of each class; the external
    site, which only evaluates, one of each (an AUC needs both)."""
    need = min_per_class if role == "train" else 1
    short = [label for label in (1, 0) if counts.get(label, 0) < need]
    if not short:
        return None
    have = ", ".join(f"{counts.get(k, 0)} {CLASS_NAMES[k]}" for k in (1, 0))
    if role == "train":
        why = f"training needs at least {need} of each class (min-patients-per-class)"
    else:
        why = "an AUC at the external site needs at least one of each class"
    return f"site {name} ({role}): {have} patients; {why}"

"""Where a federated round's time goes: the sites' own work vs the rest.

Each training site's train reply carries its seconds on the message and its
peak memory (`client_app.node_cost`). A round's overhead is its wall time at
the server minus the slowest site's work: SecAgg+'s other stages, transport,
waiting and aggregation.
"""

from __future__ import annotations

import math


def round_timing(
    phase: str,
    rnd: int,
    seconds: float,
    site_metrics: list[dict],
    stages: int | None = None,
) -> dict:
    """One secure round's wall time next to its slowest site's work, and the
    message round trips (`stages`) it took."""
    work = [float(m["seconds"]) for m in site_metrics if "seconds" in m]
    memory = [float(m["peak-rss-mb"]) for m in site_metrics if "peak-rss-mb" in m]
    return {
        "phase": phase,
        "round": rnd,
        "seconds": seconds,
        "site_seconds": max(work, default=math.nan),
        "site_peak_rss_mb": max(memory, default=math.nan),
        "stages": stages,
    }


def summarise_timing(rounds: list[dict]) -> dict:
    """Totals over a run's secure rounds; `overhead` is the share of their wall
    time not spent in the slowest site's work."""
    wall = sum(r["seconds"] for r in rounds)
    work = sum(r["site_seconds"] for r in rounds if math.isfinite(r["site_seconds"]))
    peaks = [r["site_peak_rss_mb"] for r in rounds]
    return {
        "rounds": rounds,
        "wall_seconds": wall,
        "site_seconds": work,
        "overhead": (wall - work) / wall if wall > 0 else math.nan,
        "site_peak_rss_mb": max((p for p in peaks if math.isfinite(p)), default=None),
    }

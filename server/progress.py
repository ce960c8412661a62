"""The run's progress lines: one per phase and BigBiGAN round, readable at a
glance. The ServerApp logs them through Flower's logger with `extra=PROGRESS`;
`fedbigbigan simulate` shows exactly these records on the terminal
(simulations/run_log.py), a deployment's ServerApp log has them among the rest."""

from __future__ import annotations

import math

PROGRESS_ATTR = "progress"
PROGRESS = {PROGRESS_ATTR: True}


def megabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def gan_round_line(entry: dict, total: int, seconds: float, up_bytes: float) -> str:
    """`round 2/5  41 s  D 5.20  E 1.23  G 1.11  5.1 MB up per site`."""
    width = len(str(total))
    text = f"round {entry['round']:{width}d}/{total}  {seconds:4.0f} s"
    if "d_loss" in entry:  # with DP the sites send no losses
        text += (
            f"  D {entry['d_loss']:.2f}  E {entry['e_loss']:.2f}"
            f"  G {entry['g_loss']:.2f}"
        )
    text += f"  {megabytes(up_bytes)} up per site  ({entry['sites']} sites)"
    if entry.get("clipped"):
        text += f"  {entry['clipped']} values clipped"
    return text


def phase_line(name: str, seconds: float, detail: str = "") -> str:
    """`head (lm, 2 secure rounds)  12 s`."""
    secs = f"{seconds:4.0f} s" if math.isfinite(seconds) else ""
    return f"{name}{f' ({detail})' if detail else ''}  {secs}".rstrip()

"""`fedbigbigan privacy-curve`: the same simulated study at several DP noise
levels; external AUC and the membership attacks against epsilon.

Each noise level is a full simulated run in OUT/noise-<sigma>/ on one shared
phantom study (OUT/data). OUT/privacy_curve.json and .png hold the curve, and
the report of any of those runs shows it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from common.config import RunConfig
from server.run_dir import PRIVACY_CURVE as CURVE


def privacy_curve(
    out: Path,
    config: RunConfig,
    noise_multipliers: list[float],
    scale: float = 1.0,
    slices_per_patient: int = 6,
) -> list[dict]:
    from common.strict_json import strict_json
    from simulations.scenarios import build_scenario, load_scenario
    from simulations.simulate import simulate

    out = Path(out)
    data = out / "data"
    paper = load_scenario("paper")
    build_scenario(paper, data, scale, config.seed, slices_per_patient)
    rows = []
    for sigma in noise_multipliers:
        run = out / f"noise-{sigma:g}"
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "data").exists():
            (run / "data").symlink_to(data.resolve(), target_is_directory=True)
        metrics = simulate(run, dataclasses.replace(config, dp_noise_multiplier=sigma))
        external = metrics["splits"]["external"]
        attack = metrics["membership_inference"]
        rows.append(
            {
                "run": run.name,
                "noise_multiplier": sigma,
                "epsilon": metrics["dp"]["epsilon"],
                "delta": config.dp_delta,
                "external_auc": external["auc"],
                "external_auc_ci": external["auc_ci"],
                "head_attack_auc": attack["head_attack_auc"],
                "discriminator_attack_auc": attack["discriminator_attack_auc"],
            }
        )
        # written after every run, so an interrupted sweep keeps what it has
        (out / CURVE).write_text(json.dumps(strict_json(rows), indent=2))
        plot_curve(out / "privacy_curve.png", rows)
    return rows


def plot_curve(path: Path, rows: list[dict]) -> None:
    """External AUC (with CI) and attack AUCs against epsilon (log scale; no DP
    drawn at the right edge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r["epsilon"] for r in rows if math.isfinite(r["epsilon"])]
    edge = 10 * max(finite) if finite else 10.0
    xs = [r["epsilon"] if math.isfinite(r["epsilon"]) else edge for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    auc = [r["external_auc"] for r in rows]
    low = [a - r["external_auc_ci"][0] for a, r in zip(auc, rows, strict=True)]
    high = [r["external_auc_ci"][1] - a for a, r in zip(auc, rows, strict=True)]
    ax.errorbar(
        xs, auc, yerr=[low, high], marker="o", capsize=3, label="external AUC (95% CI)"
    )
    ax.plot(xs, [r["head_attack_auc"] for r in rows], "s--", label="attack on the head")
    disc = [r["discriminator_attack_auc"] for r in rows]
    if all(d is not None for d in disc):
        ax.plot(xs, disc, "^--", label="attack on D")
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set(xlabel="epsilon (right edge: no DP)", ylabel="AUC", ylim=(0, 1))
    ax.set_title("Privacy vs utility (site-level DP on the BigBiGAN rounds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)

"""A grid of simulations: scenario x strategy x federated parts x seed.

    fedbigbigan simulate --sweep sweep.toml --out runs/sweep

The sweep file (TOML) lists the grid and what every run shares:

    scenarios = ["paper", "label-skew"]
    strategies = ["fedavg", "fedprox"]
    federated-parts = ["egd"]
    seeds = [0, 1]
    scale = 0.3                # phantom study size (simulate --scale)
    slices = 2                 # slices per patient (simulate --slices)
    central = false            # also train-central per scenario and seed
    [run-config]               # run config overrides for every run
    gan-rounds = 2
    [scenario-settings.label-skew]
    alpha = 0.3

Each run gets its own directory (a finished one is reused, so an interrupted
sweep continues); `sweep.csv` gets one row per run and comparison: the federated
model's external AUC with its DeLong CI, the same encoder's features with a head
fitted on all training sites' data pooled ("pooled head"), each training site's
own head ("local-only"), and with `central`, BigBiGAN trained on the pooled data
("centralized"); and the run's other federated heads: the model's ridge head
("federated ridge") and the baselines' ("radiomics lm", "radiomics ridge",
"untrained lm", "untrained ridge", each with the paired difference model minus
it). `sweep.png` plots them (the baselines' lm heads among them).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import tomllib

from common.config import FEDERATED_PARTS, STRATEGIES, RunConfig
from simulations.scenarios import ScenarioError, load_scenario

SWEEP_CSV = "sweep.csv"
SWEEP_PNG = "sweep.png"
COLUMNS = (
    "scenario",
    "strategy",
    "federated_parts",
    "seed",
    "setting",
    "site",
    "external_auc",
    "ci_low",
    "ci_high",
    "external_patients",
    "up_mb",
    "down_mb",
    # baseline rows: the federated model's external AUC minus this one's, on
    # the same patients (paired DeLong, computed at the external site)
    "model_minus_this",
    "diff_ci_low",
    "diff_ci_high",
    "diff_p",
    "run",
)
_KEYS = {
    "scenarios",
    "strategies",
    "federated-parts",
    "seeds",
    "scale",
    "slices",
    "central",
    "run-config",
    "scenario-settings",
}


@dataclasses.dataclass(frozen=True)
class Sweep:
    scenarios: tuple[str, ...] = ("paper",)
    strategies: tuple[str, ...] = ("fedavg",)
    federated_parts: tuple[str, ...] = ("egd",)
    seeds: tuple[int, ...] = (0,)
    scale: float = 1.0
    slices: int = 6
    central: bool = False
    run_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    scenario_settings: dict[str, dict] = dataclasses.field(default_factory=dict)


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep file; errors name the file and the key."""
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ScenarioError(f"sweep file {path}: {err}") from None
    unknown = set(table) - _KEYS
    if unknown:
        raise ScenarioError(
            f"{path}: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})"
        )
    sweep = Sweep(
        scenarios=tuple(table.get("scenarios", ["paper"])),
        strategies=tuple(table.get("strategies", ["fedavg"])),
        federated_parts=tuple(table.get("federated-parts", ["egd"])),
        seeds=tuple(int(s) for s in table.get("seeds", [0])),
        scale=float(table.get("scale", 1.0)),
        slices=int(table.get("slices", 6)),
        central=bool(table.get("central", False)),
        run_config=dict(table.get("run-config", {})),
        scenario_settings=dict(table.get("scenario-settings", {})),
    )
    for name, allowed, values in (
        ("strategies", STRATEGIES, sweep.strategies),
        ("federated-parts", tuple(FEDERATED_PARTS), sweep.federated_parts),
    ):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ScenarioError(f"{path}: {name} {bad} unknown (use {list(allowed)})")
    if not (math.isfinite(sweep.scale) and sweep.scale > 0) or sweep.slices < 1:
        raise ScenarioError(
            f"{path}: scale must be a finite number > 0 and slices an integer "
            f">= 1, got scale {sweep.scale!r}, slices {sweep.slices!r}"
        )
    for name in sweep.scenarios:  # fail before the first run, not in the middle
        load_scenario(name, sweep.scenario_settings.get(name))
    return sweep


def run_sweep(path: Path, out: Path, base_flat: dict[str, Any]) -> list[dict]:
    """Run every combination (skipping finished ones); write sweep.csv/png."""
    from simulations.simulate import simulate

    sweep = load_sweep(path)
    out = Path(out)
    grid = list(
        itertools.product(
            sweep.scenarios, sweep.seeds, sweep.strategies, sweep.federated_parts
        )
    )
    configs = {  # every run's config checked before the first run starts
        (seed, strategy, parts): RunConfig.from_flat(
            {
                **base_flat,
                **sweep.run_config,
                "seed": seed,
                "strategy": strategy,
                "federated-parts": parts,
            }
        )
        for _, seed, strategy, parts in grid
    }
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for scenario_name, seed, strategy, parts in grid:
        scenario = load_scenario(
            scenario_name, sweep.scenario_settings.get(scenario_name)
        )
        config = configs[(seed, strategy, parts)]
        run = out / f"{scenario_name}__{strategy}__{parts}__s{seed}"
        metrics = _finished(run, config)
        if metrics is None:
            # sites are built once per scenario and seed and shared by its runs
            data = out / "data" / f"{scenario_name}__s{seed}"
            run.mkdir(parents=True, exist_ok=True)
            if not (run / "data").exists():
                data.mkdir(parents=True, exist_ok=True)
                (run / "data").symlink_to(data.resolve(), target_is_directory=True)
            metrics = simulate(run, config, sweep.scale, sweep.slices, None, scenario)
        key = (scenario_name, strategy, parts, seed)
        rows += _rows(key, run, metrics)
        _write(out, rows)
    if sweep.central:
        rows += _central_rows(sweep, out, base_flat)
        _write(out, rows)
    return rows


def _finished(run: Path, config: RunConfig) -> dict | None:
    """A run's metrics if it completed (comparisons are written last) under
    this run config; one finished under another config is refused, not mixed
    into the table."""
    from server.checkpointing import stable_config
    from server.run_dir import RunDirError

    path = run / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if "comparisons" not in metrics:
        return None
    if (run / "config.json").is_file():
        done = RunConfig.from_flat(json.loads((run / "config.json").read_text()))
        # the scenario sets the roster; out-dir and data root are volatile
        wanted = {**stable_config(config), "sim-sites": done.sim_sites}
        differ = sorted(
            key
            for key, value in stable_config(done).items()
            if wanted.get(key) != value
        )
        if differ:
            raise RunDirError(
                f"{run} finished under another run config ({', '.join(differ)} "
                "differ): use a new --out for this sweep"
            )
    return metrics


def _rows(key: tuple, run: Path, metrics: dict) -> list[dict]:
    scenario, strategy, parts, seed = key
    base = {
        "scenario": scenario,
        "strategy": strategy,
        "federated_parts": parts,
        "seed": seed,
        "run": run.name,
        **_payload_fields(metrics.get("payload")),
    }
    external = metrics["splits"]["external"]
    rows = [
        {
            **base,
            "setting": "federated",
            "site": "",
            **_auc_fields(external["auc"], external["auc_ci"], external["n_patients"]),
        }
    ]
    rows += _head_rows(base, metrics)
    table = metrics["comparisons"]["table"]
    ext_site = _external_target(table)
    if ext_site is None:
        return rows
    pooled = table["pooled lm (not federated)"][ext_site]
    rows.append(
        {
            **base,
            "setting": "pooled head",
            "site": "",
            **_auc_fields(pooled["auc"], pooled["ci"], pooled["n_patients"]),
        }
    )
    for head, targets in table.items():
        if head.startswith("local lm ("):
            m = targets[ext_site]
            rows.append(
                {
                    **base,
                    "setting": "local-only",
                    "site": head[len("local lm (") : -1],
                    **_auc_fields(m["auc"], m["ci"], m["n_patients"]),
                }
            )
    return rows


def _head_rows(base: dict, metrics: dict) -> list[dict]:
    """The run's other federated heads at the external site: the model's ridge
    head and both baselines' lm and ridge heads (`common.evaluation.feature_kinds`),
    with each baseline's paired difference from the model's like head."""
    heads = []
    if "model_ridge" in metrics:
        heads.append(("federated ridge", metrics["model_ridge"], None))
    for kind, entry in metrics.get("baselines", {}).items():
        for head in ("lm", "ridge"):
            paired = (entry.get("external_difference") or {}).get(head)
            heads.append((f"{kind} {head}", entry[head], paired))
    rows = []
    for setting, summary, paired in heads:
        ext = summary["splits"]["external"]
        row = {
            **base,
            "setting": setting,
            "site": "",
            **_auc_fields(ext["auc"], ext["auc_ci"], ext["n_patients"]),
        }
        if paired:
            row |= {
                "model_minus_this": paired["diff"],
                "diff_ci_low": paired["diff_ci"][0],
                "diff_ci_high": paired["diff_ci"][1],
                "diff_p": paired["p"],
            }
        rows.append(row)
    return rows


def _payload_fields(payload: dict | None) -> dict:
    """Megabytes a site sends and receives per BigBiGAN round (the run's own
    count): what choosing federated parts or a transport costs on the link."""
    if not payload:  # frozen-encoder runs have no BigBiGAN rounds
        return {"up_mb": "", "down_mb": ""}
    return {
        "up_mb": round(payload["up_bytes"] / 1e6, 3),
        "down_mb": round(payload["down_bytes"] / 1e6, 3),
    }


def _external_target(table: dict) -> str | None:
    """The external site's column of a comparisons table (not a '... test')."""
    columns = next(iter(table.values()))
    names = [t for t in columns if not t.endswith(" test")]
    return names[0] if names else None


def _auc_fields(auc: float, ci, n: int) -> dict:
    low, high = ci if ci is not None else (float("nan"), float("nan"))
    return {"external_auc": auc, "ci_low": low, "ci_high": high, "external_patients": n}


def _central_rows(sweep: Sweep, out: Path, base_flat: dict) -> list[dict]:
    """BigBiGAN trained on the pooled training sites, per scenario and seed."""
    from simulations.central import train_central
    from simulations.scenarios import build_scenario

    rows = []
    for scenario_name, seed in itertools.product(sweep.scenarios, sweep.seeds):
        scenario = load_scenario(
            scenario_name, sweep.scenario_settings.get(scenario_name)
        )
        data = out / "data" / f"{scenario_name}__s{seed}"
        sim_sites = build_scenario(scenario, data, sweep.scale, seed, sweep.slices)
        flat = {**base_flat, **sweep.run_config, "seed": seed, "sim-sites": sim_sites}
        config = dataclasses.replace(
            RunConfig.from_flat(flat), sim_data_root=str(data.resolve())
        )
        run = out / f"{scenario_name}__central__s{seed}"
        done = run / "metrics.json"  # written last: a finished run is reused
        if done.is_file():
            metrics = json.loads(done.read_text())
        else:
            metrics = train_central(run, config)
        external = next(
            (
                m
                for split, m in metrics["probe_trained"].items()
                if split not in ("train", "val", "test", "cv")  # cv: older runs
            ),
            None,
        )
        if external is not None:
            rows.append(
                {
                    "scenario": scenario_name,
                    "strategy": "central",
                    "federated_parts": "",
                    "seed": seed,
                    "setting": "centralized",
                    "site": "",
                    "run": run.name,
                    **_auc_fields(
                        external["auc"], external["ci"], external["n_patients"]
                    ),
                }
            )
    return rows


def _write(out: Path, rows: list[dict]) -> None:
    """sweep.csv (rewritten whole after every run: an interrupted sweep keeps
    what it has) and the summary plot."""
    tmp = out / (SWEEP_CSV + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / SWEEP_CSV)
    plot_sweep(out / SWEEP_PNG, rows)


def plot_sweep(path: Path, rows: list[dict]) -> None:
    """External AUC per configuration: federated (mean over seeds, each seed's
    DeLong CI as a bar), pooled head and local-only heads (mean and range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    configs = sorted(
        {(r["scenario"], r["strategy"], r["federated_parts"]) for r in rows},
        key=lambda c: (c[0], c[1] == "central", c[1], c[2]),
    )
    styles = {
        "federated": ("o", "C0"),
        "centralized": ("D", "C3"),
        "pooled head": ("s", "C1"),
        "local-only": ("v", "C2"),
        "radiomics lm": ("^", "C4"),
        "untrained lm": ("x", "C5"),
    }
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(configs) + 2), 4.5))
    for x, config in enumerate(configs):
        mine = [
            r
            for r in rows
            if (r["scenario"], r["strategy"], r["federated_parts"]) == config
        ]
        for offset, (setting, (marker, colour)) in enumerate(styles.items()):
            values = [r for r in mine if r["setting"] == setting]
            aucs = np.array([float(r["external_auc"]) for r in values], float)
            aucs = aucs[np.isfinite(aucs)]
            if aucs.size == 0:
                continue
            xs = x + (offset - 2.5) * 0.12
            if setting in ("federated", "centralized"):
                for r in values:
                    lo, hi = float(r["ci_low"]), float(r["ci_high"])
                    if np.isfinite(lo) and np.isfinite(hi):
                        ax.plot([xs, xs], [lo, hi], color=colour, alpha=0.4)
            else:
                ax.plot([xs, xs], [aucs.min(), aucs.max()], color=colour, alpha=0.6)
            ax.plot(xs, aucs.mean(), marker, color=colour, label=setting)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(configs)))
    ax.set_xticklabels(
        ["\n".join(c for c in config if c) for config in configs], fontsize=8
    )
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("external patient AUC")
    ax.set_title("External validation across the sweep (bars: 95% CI or range)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one entry per setting
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

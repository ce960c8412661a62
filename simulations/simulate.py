"""Run the federated study in Flower's Simulation Engine on phantom sites."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from common.config import FEDERATED_PARTS, RunConfig
from simulations.phantoms import write_study


def simulate(
    out: Path,
    config: RunConfig,
    scale: float = 1.0,
    slices_per_patient: int = 6,
    client_app=None,
) -> dict:
    """Write phantom sites (unless present), run the federation, return metrics.

    `client_app` replaces the hospitals' ClientApp (tests wrap it in mods that
    record what leaves a site)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = out / "data"
    if not (data / "hospital_b" / "labels.csv").exists():
        write_study(
            data, scale=scale, seed=config.seed, slices_per_patient=slices_per_patient
        )
    config = dataclasses.replace(
        config, sim_data_root=str(data.resolve()), out_dir=str(out.resolve())
    )
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    if client_app is None:
        from client.client_app import app as client_app
    from server.server_app import run_federation

    result: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context):
        result.update(run_federation(grid, context, config, out))

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": 2},
    }
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(config.site_roster()),
        backend_config=backend,
    )
    if not result:
        raise RuntimeError("the federated run did not complete; see the log above")
    from simulations.comparisons import add_to_run

    result["comparisons"] = add_to_run(out, config)
    from server.run_dir import update_metrics
    from simulations.membership import membership_inference

    result["membership_inference"] = membership_inference(out, config)
    update_metrics(out, membership_inference=result["membership_inference"])
    from simulations.reconstructions import write_reconstructions

    if "g" in FEDERATED_PARTS[config.federated_parts]:  # else no global G exists
        write_reconstructions(out, config)  # shows slices: simulation only
    return result

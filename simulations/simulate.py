"""Run the federated study in Flower's Simulation Engine on phantom sites."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from common.config import FEDERATED_PARTS, RunConfig
from simulations.scenarios import (
    MANIFEST,
    Scenario,
    build_scenario,
    data_source,
    load_scenario,
)


def simulate(
    out: Path,
    config: RunConfig,
    scale: float = 1.0,
    slices_per_patient: int = 6,
    client_app=None,
    scenario: Scenario | None = None,
    slice_choice: str = "even",
) -> dict:
    """Write the scenario's sites (unless present), run the federation, return
    metrics. Without a scenario: the one `out` was built with, else the paper's.

    `client_app` replaces the hospitals' ClientApp (tests wrap it in mods that
    record what leaves a site)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = out / "data"
    if scenario is None and (data / MANIFEST).is_file():  # e.g. a resumed run
        sim_sites = json.loads((data / MANIFEST).read_text())["sim_sites"]
    else:
        sim_sites = build_scenario(
            scenario or load_scenario("paper"),
            data,
            scale,
            config.seed,
            slices_per_patient,
            slice_choice,
        )
    config = dataclasses.replace(
        config,
        sim_data_root=str(data.resolve()),
        out_dir=str(out.resolve()),
        sim_sites=sim_sites,
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
        "client_resources": {
            "num_cpus": config.sim_client_cpus,
            "num_gpus": config.sim_client_gpus,
        },
        "init_args": {"num_cpus": max(2, os.cpu_count() or 2)},
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

    # the report says so: a simulation's sites are phantoms unless linked images
    result["data"] = data_source(data)
    update_metrics(out, data=result["data"])
    from simulations.membership import membership_inference

    result["membership_inference"] = membership_inference(out, config)
    update_metrics(out, membership_inference=result["membership_inference"])
    from simulations.reconstructions import write_reconstructions

    if "g" in FEDERATED_PARTS[config.federated_parts]:  # else no global G exists
        write_reconstructions(out, config)  # shows slices: simulation only
    return result

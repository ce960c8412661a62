"""Run the federated study in Flower's Simulation Engine on phantom sites."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from common.config import FEDERATED_PARTS, RunConfig
from server import tensorboard
from server.progress import PROGRESS
from simulations.scenarios import (
    MANIFEST,
    Scenario,
    build_scenario,
    data_source,
    load_scenario,
)
from simulations.site_checks import check_sites

log = logging.getLogger(__name__)


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
    roles = [r for _, r in RunConfig(sim_sites=sim_sites).site_roster()]
    log.info(
        "data: %d sites (%d training, %d held out) in %s",
        len(roles),
        roles.count("train"),
        len(roles) - roles.count("train"),
        data,
        extra=PROGRESS,
    )
    config = dataclasses.replace(
        config,
        sim_data_root=str(data.resolve()),
        out_dir=str(out.resolve()),
        sim_sites=sim_sites,
    )
    counts = check_sites(config)  # refused here, before Flower starts
    log.info(
        "sites: %s",
        ", ".join(f"{n} {c[1]}+{c[0]} patients" for n, c in counts.items()),
    )
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    if client_app is None:
        from client.client_app import app as client_app
    from server.server_app import run_federation

    result: dict = {}
    failed: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context):
        try:
            result.update(run_federation(grid, context, config, out))
        except BaseException as err:  # Flower logs it; we name it to the user
            failed.append(err)
            raise

    backend = {
        "client_resources": {
            "num_cpus": config.sim_client_cpus,
            "num_gpus": config.sim_client_gpus,
        },
        "init_args": {"num_cpus": max(2, os.cpu_count() or 2)},
    }
    deprecation = _RunSimulationDeprecation()
    logging.getLogger("flwr").addFilter(deprecation)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(config.site_roster()),
            backend_config=backend,
        )
    finally:
        logging.getLogger("flwr").removeFilter(deprecation)
    if failed:
        raise RuntimeError(f"the federated run stopped: {failed[0]}") from failed[0]
    if not result:
        raise RuntimeError("the federated run did not complete; see the log")
    started = time.monotonic()
    rounds = config.gan_rounds if config.trains_encoder else 0
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
        grid = write_reconstructions(out, config)  # shows slices: simulation only
        tensorboard.log_image(out, "reconstructions/x, G(E(x))", grid, rounds)
    log.info(
        "comparisons, membership inference, reconstructions  %.0f s",
        time.monotonic() - started,
        extra=PROGRESS,
    )
    return result


class _RunSimulationDeprecation(logging.Filter):
    """Drops Flower's warning that `run_simulation` is deprecated: simulate()
    needs it to hand the ServerApp a typed RunConfig and the sites it just
    wrote, in one process (README: "Two ways to the same run")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()

"""A simulated run's grid of real slices and G(E(x)), one pair of rows per site.

Only a simulation may draw this into a run directory: it holds every simulated
site's slices anyway. In a deployment each hospital draws its own, at home
(`fedbigbigan reconstruct`).
"""

from __future__ import annotations

from pathlib import Path

from common.config import RunConfig
from server.run_dir import RECONSTRUCTIONS


def write_reconstructions(run_dir: Path, config: RunConfig, per_site: int = 6) -> Path:
    """RUN_DIR/reconstructions.png from each site's held-out slices (test, or
    the external split), one middle slice per patient."""
    from common.model.checkpoint import load_model
    from common.model.grids import one_slice_per_patient, save_reconstruction_groups
    from simulations.central import pooled_data

    model = load_model(run_dir, devices=config.devices, seed=config.seed)
    groups = {}
    for site, splits in pooled_data(config).items():
        held_out = splits.get("test", splits.get("external"))
        if held_out is not None and len(held_out):
            groups[site] = one_slice_per_patient(held_out, per_site)
    path = Path(run_dir) / RECONSTRUCTIONS
    save_reconstruction_groups(path, model, groups)
    return path

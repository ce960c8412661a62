"""`fedbigbigan reconstruct`: a hospital's own real slices and G(E(x)) under a
trained run, written on the hospital's machine (the grid shows patients, so it
never goes to the server)."""

from __future__ import annotations

import json
from pathlib import Path

from common.config import RunConfig


def site_reconstructions(
    run_dir: Path,
    dicom_dir: Path,
    out: Path,
    n_patients: int = 8,
    cache_dir: Path | None = None,
) -> Path:
    """Write `out` (PNG): the middle slice of up to `n_patients` patients found
    under `dicom_dir`, and below each its reconstruction by the run's G and E."""
    from client.predict import ingest_unlabelled
    from client.site import ingest_config
    from common.model.adabn import adapt_batchnorm
    from common.model.checkpoint import load_model
    from common.model.dataset import slices_from_ingest
    from common.model.grids import one_slice_per_patient, save_reconstruction_groups

    run_dir, dicom_dir = Path(run_dir), Path(dicom_dir)
    config = RunConfig.from_flat(json.loads((run_dir / "config.json").read_text()))
    result = ingest_unlabelled(dicom_dir, config, cache_dir)
    if not result.patients:
        raise ValueError(
            f"{dicom_dir}: no usable axial CT slice found; see "
            f"{result.report_path} for why each file was skipped"
        )
    size = ingest_config(config).image_size
    slices = slices_from_ingest(result.patients[:n_patients], size)
    model = load_model(run_dir, devices=config.devices, seed=config.seed)
    if config.strategy == "fedbn":
        # no global BatchNorm statistics: E's and G's estimated on these slices
        everyone = slices_from_ingest(result.patients, size).images
        model.adapt_batchnorm(everyone)
        adapt_batchnorm(model.generator, model.encode(everyone).astype("float32"))
    images = one_slice_per_patient(slices, n_patients)
    save_reconstruction_groups(Path(out), model, {dicom_dir.name: images})
    return Path(out)

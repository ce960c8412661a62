"""`fedbigbigan predict`: a patient's COVID-19 score from DICOM, at a hospital.

The trained run's encoder and linear head score every slice the ingest keeps (the
same preprocessing as training); a patient's score is the mean of its slices'
scores and the decision uses the run's validation cut-off unchanged. Nothing leaves
the machine. The least-squares head was fitted to 0/1 labels, so its score is on a
0..1 scale but is not a calibrated probability; it is shown clipped to [0, 1].

After a FedBN run, whose BatchNorm statistics never left the training sites, E's
statistics are estimated on the slices being scored (AdaBN), as the held-out site
did during the run: score a hospital's batch of patients together, not one alone.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from common.config import RunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    patient_id: str
    n_slices: int
    score: float  # mean slice score, clipped to [0, 1]
    covid: bool  # score >= the validation cut-off
    threshold: float


def predict_dicom(run_dir: Path, dicom_dir: Path, cache_dir: Path | None = None):
    """Predictions per patient found under `dicom_dir`, and the seconds it took."""
    from client.site import ingest_config
    from common.adabn import adapt_batchnorm
    from common.checkpoint import encode_z_mean, load_encoder
    from common.dataset import slices_from_ingest
    from common.linear_head import predict
    from common.roc_stats import patient_score
    from common.strict_json import revive_json

    start = time.perf_counter()
    run_dir, dicom_dir = Path(run_dir), Path(dicom_dir)
    config = RunConfig.from_flat(json.loads((run_dir / "config.json").read_text()))
    metrics = revive_json(json.loads((run_dir / "metrics.json").read_text()))
    threshold = float(metrics["threshold"])
    with np.load(run_dir / "global_weights.npz") as weights:
        coef = weights["head"]
    encoder = load_encoder(run_dir)  # E alone: scoring needs nothing else
    result = ingest_unlabelled(dicom_dir, config, cache_dir)
    size = ingest_config(config).image_size
    if config.strategy == "fedbn" and result.patients:
        # the run's BatchNorm statistics stayed at its training sites: estimate
        # them on the slices being scored, as the held-out site did in the run
        adapt_batchnorm(encoder, slices_from_ingest(result.patients, size).images)
        log.info(
            "FedBN run: E's BatchNorm statistics estimated on the %d patients "
            "under %s (AdaBN)",
            len(result.patients),
            dicom_dir,
        )
    predictions = []
    for patient in result.patients:
        slices = slices_from_ingest([patient], size)
        scores = predict(coef, encode_z_mean(encoder, slices.images))
        raw = patient_score(scores, config.patient_score)
        score = float(np.clip(raw, 0.0, 1.0))
        predictions.append(
            Prediction(
                patient.patient_id,
                len(slices),
                score,
                bool(raw >= threshold),
                threshold,
            )
        )
    if not predictions:
        raise ValueError(
            f"{dicom_dir}: no usable axial CT slice found; see "
            f"{result.report_path} for why each file was skipped"
        )
    return predictions, time.perf_counter() - start


def ingest_unlabelled(dicom_dir: Path, config: RunConfig, cache_dir: Path | None):
    """Ingest a DICOM folder that has no labels file, as the run preprocesses.

    The cache (default: the user cache folder, never inside `dicom_dir`) outlives
    the call, so the patients' slices can be loaded afterwards.
    """
    from client.site import ingest_config
    from common.ingest import default_cache_dir, ingest_site

    with tempfile.TemporaryDirectory(prefix="fedbigbigan-ingest-") as tmp:
        # ingest needs a labels file; the labels are unknown here and never used
        labels = Path(tmp) / "labels.csv"
        _write_placeholder_labels(labels, dicom_dir)
        cache = cache_dir or default_cache_dir(dicom_dir)
        return ingest_site(
            dicom_dir, labels, cache, ingest_config(config), progress=False
        )


def _write_placeholder_labels(path: Path, dicom_dir: Path) -> None:
    """One row per PatientID found in the headers (label 0, ignored)."""
    ids = set()
    for file in dicom_dir.rglob("*"):
        if not file.is_file():
            continue
        try:
            ds = pydicom.dcmread(
                file, stop_before_pixels=True, specific_tags=["PatientID"]
            )
        except Exception:  # not DICOM: ingest reports it with its reason
            continue
        if ds.get("PatientID"):
            ids.add(str(ds.PatientID))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "label"])
        writer.writerows([pid, 0] for pid in sorted(ids))

"""`fedbigbigan predict`: a patient's COVID-19 score from DICOM or images.

The trained run's encoder and linear head score every slice the ingest keeps, or
every image of an image file or folder (the same preprocessing as training, from
the run's config.json); a patient's score is the mean of its slices'
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

from client.image_input import InputError
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
    """Predictions per patient found under `dicom_dir` (a DICOM folder, an
    image file or a folder of images), and the seconds it took; `InputError`
    (one line) when nothing in it can be scored."""
    from common.evaluation.linear_head import predict
    from common.evaluation.roc_stats import patient_score
    from common.model.adabn import adapt_batchnorm
    from common.model.checkpoint import encode_z_mean, load_encoder
    from common.strict_json import revive_json

    start = time.perf_counter()
    run_dir, dicom_dir = Path(run_dir), Path(dicom_dir)
    config = RunConfig.from_flat(json.loads((run_dir / "config.json").read_text()))
    metrics = revive_json(json.loads((run_dir / "metrics.json").read_text()))
    threshold = float(metrics["threshold"])
    with np.load(run_dir / "global_weights.npz") as weights:
        coef = weights["head"]
    encoder = load_encoder(run_dir)  # E alone: scoring needs nothing else
    groups = _input_slices(dicom_dir, config, cache_dir)
    if config.strategy == "fedbn":
        # the run's BatchNorm statistics stayed at its training sites: estimate
        # them on the slices being scored, as the held-out site did in the run
        adapt_batchnorm(encoder, np.concatenate(list(groups.values())))
        log.info(
            "FedBN run: E's BatchNorm statistics estimated on the %d patients "
            "under %s (AdaBN)",
            len(groups),
            dicom_dir,
        )
    predictions = []
    for patient_id, images in groups.items():
        scores = predict(coef, encode_z_mean(encoder, images))
        raw = patient_score(scores, config.patient_score)
        score = float(np.clip(raw, 0.0, 1.0))
        predictions.append(
            Prediction(
                patient_id,
                len(images),
                score,
                bool(raw >= threshold),
                threshold,
            )
        )
    return predictions, time.perf_counter() - start


def _input_slices(
    path: Path, config: RunConfig, cache_dir: Path | None
) -> dict[str, np.ndarray]:
    """Patient -> model-ready slices (n, size, size, 3) from DICOM or images,
    preprocessed as the run's training data was (its recorded config)."""
    from client.image_input import image_patients, is_image_input
    from client.site import ingest_config
    from common.model.dataset import slices_from_ingest

    ingest = ingest_config(config)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if is_image_input(path):
        groups = image_patients(path, ingest)
        return {pid: np.repeat(s[..., None], 3, axis=-1) for pid, s in groups.items()}
    if not path.is_dir():
        raise InputError(
            f"{path}: give a DICOM folder, an image file or a folder of images"
        )
    result = ingest_unlabelled(path, config, cache_dir)
    if not result.patients:
        raise InputError(
            f"{path}: no usable axial CT slice found; see "
            f"{result.report_path} for why each file was skipped"
        )
    return {
        p.patient_id: slices_from_ingest([p], ingest.image_size).images
        for p in result.patients
    }


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

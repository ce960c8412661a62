"""The centralised reference: the same model and config, all training data pooled.

Also the place that shows E learns: a linear probe on features of the trained
encoder against the same probe on the randomly initialised encoder (same preset,
same seed). Pixels never leave a site in the federated path; this module is for
simulation and for a single site's own data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from client.site import Site, site_data
from common.config import RunConfig
from common.dataset import SliceSet
from common.grids import save_reconstructions
from common.linear_head import predict, solve, sufficient_statistics
from common.roc_stats import auc_ci, patient_scores

log = logging.getLogger(__name__)


def pooled_data(config: RunConfig) -> dict[str, dict[str, SliceSet]]:
    """Every simulated site's splits, keyed by site name."""
    root = Path(config.sim_data_root)
    return {
        name: site_data(Site(name, root / name, role), config)
        for name, role in config.site_roster()
    }


def concat(sets: list[SliceSet]) -> SliceSet:
    """One SliceSet from several, patients renumbered so they stay distinct."""
    offset, owners = 0, []
    for s in sets:
        owners.append(s.patient + offset)
        offset += int(s.patient.max()) + 1 if len(s) else 0
    return SliceSet(
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.labels for s in sets]),
        np.concatenate(owners),
    )


def probe(model, train: SliceSet, evals: dict[str, SliceSet], ridge: float) -> dict:
    """The paper's linear head on z_mean; patient-level AUC with DeLong CI."""
    gram, moment = sufficient_statistics(model.encode(train.images), train.labels)
    coef = solve(gram, moment, ridge)
    out = {}
    for name, data in evals.items():
        if not len(data):
            continue
        scores, labels = patient_scores(
            predict(coef, model.encode(data.images)), data.patient, data.labels
        )
        auc, low, high = auc_ci(scores, labels)
        out[name] = {"auc": auc, "ci": [low, high], "n_patients": len(labels)}
    return out


def probe_cv(
    model, data: SliceSet, ridge: float, folds: int = 5, seed: int = 0
) -> dict:
    """Patient-grouped k-fold linear probe: out-of-fold patient AUC with DeLong CI.

    Uses every labelled patient once as test data, so small studies still give a
    usable interval (a single 10% test split of a phantom site has ~8 patients).
    """
    features = model.encode(data.images)
    patients = np.unique(data.patient)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(patients, rng.permutation(len(patients)) % folds, strict=True))
    slice_fold = np.array([fold_of[p] for p in data.patient])
    scores = np.zeros(len(data))
    for k in range(folds):
        train, test = slice_fold != k, slice_fold == k
        coef = solve(*sufficient_statistics(features[train], data.labels[train]), ridge)
        scores[test] = predict(coef, features[test])
    patient_score, labels = patient_scores(scores, data.patient, data.labels)
    auc, low, high = auc_ci(patient_score, labels)
    return {"auc": auc, "ci": [low, high], "n_patients": len(labels)}


def train_central(
    out: Path, config: RunConfig, save_grids: bool = True, probe_every: int = 0
) -> dict:
    """Train on the pooled training splits for the federated run's epoch budget."""
    from common.checkpoint import initial_model, save_model

    out.mkdir(parents=True, exist_ok=True)
    sites = pooled_data(config)
    train_sites = [n for n, role in config.site_roster() if role == "train"]
    train = concat([sites[n]["train"] for n in train_sites])
    evals = {
        split: concat([sites[n][split] for n in train_sites])
        for split in ("val", "test")
    }
    evals.update({n: d["external"] for n, d in sites.items() if "external" in d})
    model = initial_model(config)
    everyone = concat([train, evals["val"], evals["test"]])
    random_probe = probe(model, train, evals, config.head_ridge)
    random_recovery = model.latent_recovery()
    random_probe["cv"] = probe_cv(model, everyone, config.head_ridge)
    epochs = config.gan_rounds * config.train.local_epochs
    if not config.trains_encoder:
        epochs = 0
    one_epoch = dataclasses.replace(config.train, local_epochs=1)
    fixed = train.images[:: max(1, len(train) // 8)][:8]
    history = []
    for epoch in range(epochs):
        losses = model.train_epochs(
            train.images,
            one_epoch,
            seed=config.seed * 1000 + epoch,
            first_epoch=epoch,
            keep_optimizer_state=True,
        )
        history.append({"epoch": epoch + 1, **dataclasses.asdict(losses)})
        log.info("epoch %d/%d %s", epoch + 1, epochs, history[-1])
        history[-1]["latent_recovery"] = model.latent_recovery()
        if probe_every and (epoch + 1) % probe_every == 0:
            log.info(
                "probe at epoch %d: %s",
                epoch + 1,
                probe_cv(model, everyone, config.head_ridge),
            )
        if save_grids:
            save_reconstructions(
                out / "recon" / f"epoch_{epoch + 1:03d}.png", model, fixed
            )
    trained_probe = probe(model, train, evals, config.head_ridge)
    trained_probe["cv"] = probe_cv(model, everyone, config.head_ridge)
    metrics = {
        "mode": "central",
        "epochs": epochs,
        "n_train_slices": len(train),
        "history": history,
        "probe_trained": trained_probe,
        "probe_random": random_probe,
        "latent_recovery": {
            "random": random_recovery,
            "trained": model.latent_recovery(),
        },
        "parameters": model.parameter_counts(),
    }
    save_model(model, out / "model.npz")
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out / "metrics.json")
    return metrics

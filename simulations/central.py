"""The centralised reference: the same model and config, all training data pooled.

Also the place that asks whether E learns: a linear probe on features of the
trained encoder against the same probe on the randomly initialised encoder (same
preset, same seed, same patients and folds), with DeLong's paired CI of the AUC
difference. Pixels never leave a site in the federated path; this module is for
simulation and for a single site's own data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
from scipy import stats

from client.site import Site, site_data
from common.config import RunConfig
from common.evaluation.linear_head import (
    feature_moments,
    pooled_scale,
    predict,
    solve_standardized,
    standardized_statistics,
)
from common.evaluation.roc_stats import auc_ci, patient_scores
from common.model.dataset import SliceSet
from common.model.grids import save_reconstructions

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
        None
        if any(s.hu_range is None for s in sets)
        else np.concatenate([s.hu_range for s in sets]),
    )


def fit_head(features: np.ndarray, labels: np.ndarray, ridge: float) -> np.ndarray:
    """The federated head's fit on one place's data: least squares on features
    standardised with their own mean and SD (ridge in standardised units), mapped
    back to raw features.

    Standardising matters: an untrained encoder's z_mean has an SD near 0.003, so
    a ridge on raw features would shrink every coefficient to zero and the probe
    would measure the ridge, not the encoder.
    """
    mean, std = pooled_scale(*feature_moments(features))
    statistics, _ = standardized_statistics(features, labels, mean, std)
    return solve_standardized(*statistics, mean, std, ridge)


def probe(model, train: SliceSet, evals: dict[str, SliceSet], ridge: float) -> dict:
    """The paper's linear head on z_mean; patient-level AUC with DeLong CI."""
    coef = fit_head(model.encode(train.images), train.labels, ridge)
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


def patient_folds(
    patient: np.ndarray, labels: np.ndarray, folds: int, seed: int
) -> np.ndarray:
    """Each slice's fold: patients dealt to folds class by class, so every fold
    holds both classes in the study's proportion.

    Unstratified folds bias a pooled out-of-fold AUC below 0.5 when features
    carry no signal: a fold with more positives is scored by a head fitted on
    fewer, whose intercept is lower.
    """
    ids, first = np.unique(patient, return_index=True)
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(ids), dtype=int)
    start = 0
    for cls in np.unique(labels[first]):
        members = rng.permutation(np.flatnonzero(labels[first] == cls))
        fold_of[members] = (start + np.arange(len(members))) % folds
        start += len(members)
    return fold_of[np.searchsorted(ids, patient)]


def cv_patient_scores(
    features: np.ndarray,
    labels: np.ndarray,
    patient: np.ndarray,
    ridge: float,
    folds: int = 5,
    seed: int = 0,
    repeats: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold patient scores and labels of a patient-grouped, stratified CV,
    each slice's score averaged over `repeats` draws of the folds."""
    scores = np.zeros(len(labels))
    for r in range(repeats):
        slice_fold = patient_folds(patient, labels, folds, seed + r)
        for k in range(folds):
            train, test = slice_fold != k, slice_fold == k
            scores[test] += predict(
                fit_head(features[train], labels[train], ridge), features[test]
            )
    return patient_scores(scores / repeats, patient, labels)


# E's outputs the probe reads: the study's z_mean, and the pooled trunk feature
# (BigBiGAN's ImageNet linear evaluation read the trunk, not z)
PROBE_FEATURES = ("z_mean", "avepool_feat")
# repeated CV: on ~170 phantom patients, one draw of the folds moves the AUC
# by a few hundredths (0.59 and 0.65 for one encoder), as much as training does
PROBE_REPEATS = 5


def probe_cv(
    model,
    data: SliceSet,
    ridge: float,
    folds: int = 5,
    seed: int = 0,
    repeats: int = PROBE_REPEATS,
) -> dict:
    """Patient-grouped k-fold linear probe on each of `PROBE_FEATURES`:
    out-of-fold patient AUC with DeLong CI, keyed by feature.

    Uses every labelled patient once per repeat as test data, so small studies
    still give a usable interval (a single 10% test split of a phantom site has
    ~8 patients). The out-of-fold patient scores come back under "scores" (for
    a paired test).
    """
    features = model.encode_all(data.images, outputs=PROBE_FEATURES)
    out = {}
    for name in PROBE_FEATURES:
        scores, labels = cv_patient_scores(
            features[name], data.labels, data.patient, ridge, folds, seed, repeats
        )
        auc, low, high = auc_ci(scores, labels)
        out[name] = {
            "auc": auc,
            "ci": [low, high],
            "n_patients": len(labels),
            "scores": scores,
            "labels": labels,
        }
    return out


def compare_probes(trained: dict, random: dict) -> dict:
    """Per feature: trained minus random encoder's CV AUC, same patients and folds."""
    out = {}
    for name in trained:
        t, r = trained[name], random[name]
        if not np.array_equal(t["labels"], r["labels"]):
            raise ValueError("the two probes were not run on the same patients")
        out[name] = paired_auc_difference(t["scores"], r["scores"], t["labels"])
    return out


def _public(result: dict) -> dict:
    """probe_cv's results without their per-patient arrays (for metrics.json)."""
    return {
        name: {k: v for k, v in r.items() if k not in ("scores", "labels")}
        for name, r in result.items()
    }


def paired_auc_difference(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, level: float = 0.95
) -> dict:
    """AUC(a) - AUC(b) on the same patients, with DeLong's paired 95% CI and the
    two-sided p value (DeLong et al. 1988: the two AUCs' structural components
    are correlated because they share the cases)."""
    labels = np.asarray(labels).astype(bool)
    m, n = int(labels.sum()), int((~labels).sum())
    v10, v01 = [], []
    for scores in (scores_a, scores_b):
        scores = np.asarray(scores, float)
        pos, neg = scores[labels], scores[~labels]
        ranks = stats.rankdata(np.concatenate([pos, neg]))
        v10.append((ranks[:m] - stats.rankdata(pos)) / n)
        v01.append(1.0 - (ranks[m:] - stats.rankdata(neg)) / m)
    diff = float(v10[0].mean() - v10[1].mean())
    var = (np.var(v10[0] - v10[1], ddof=1) / m) + (np.var(v01[0] - v01[1], ddof=1) / n)
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt(var)
    p = float(2 * stats.norm.sf(abs(diff) / np.sqrt(var))) if var > 0 else 1.0
    return {"difference": diff, "ci": [diff - float(half), diff + float(half)], "p": p}


def joint_pairing(model, n: int = 64, seed: int = 0) -> float:
    """How much D's joint score s_xz depends on which z goes with which G(z):
    mean s_xz of shuffled generator pairs (G(z), z') minus matched ones (G(z), z).

    E's only route to x-specific gradients is J: while this stays near 0, J
    scores pairs by their marginals alone and E cannot learn to invert G.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, model.preset.z_dim)).astype(np.float32)
    x = np.asarray(model.generator(z, training=False))
    matched = model.discriminator([x, z], training=False)[2]
    shuffled = model.discriminator([x, np.roll(z, 1, axis=0)], training=False)[2]
    return float(np.mean(shuffled) - np.mean(matched))


def save_loss_curves(path: Path, history: list[dict]) -> None:
    """D, E and G losses per epoch so far (the federated run's losses.png)."""
    from server.report_figures import plot_losses

    rows = [
        {"epoch": h["epoch"], "d_loss": h["d"], "e_loss": h["e"], "g_loss": h["g"]}
        for h in history
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    plot_losses(tmp, rows, unit="epoch")
    os.replace(tmp, path)


def train_central(
    out: Path,
    config: RunConfig,
    save_grids: bool = True,
    probe_every: int = 0,
    supervised: bool = False,
) -> dict:
    """Train on the pooled training splits for the federated run's epoch budget.

    `supervised`: train E on the labels instead (simulations/supervised.py),
    the same architecture and budget: the ceiling the probes are read against."""
    from common.model.checkpoint import initial_model, save_model

    out.mkdir(parents=True, exist_ok=True)
    # the sites' ingest caches go under this run, never under the config's
    # default out-dir (the current folder's runs/flwr)
    config = dataclasses.replace(config, out_dir=str(out))
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
    random_spread = model.generator_spread()
    random_cv = probe_cv(model, everyone, config.head_ridge)
    epochs = config.gan_rounds * config.train.local_epochs
    if not config.trains_encoder:
        epochs = 0
    one_epoch = dataclasses.replace(config.train, local_epochs=1)
    fixed = train.images[:: max(1, len(train) // 8)][:8]
    history = []
    if supervised:
        from simulations import supervised as sup

        head = sup.make_head(config.model.z_dim, config.seed)
        optimizer = sup.make_optimizer(config.train, model.encoder, head)
        save_grids = False  # G is not trained
    for epoch in range(epochs):
        if supervised:
            bce = sup.train_supervised_epoch(
                model.encoder,
                head,
                optimizer,
                train.images,
                train.labels,
                one_epoch,
                seed=config.seed * 1000 + epoch,
            )
            history.append({"epoch": epoch + 1, "bce": bce})
        else:
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
        history[-1]["joint_pairing"] = joint_pairing(model)
        history[-1]["generator_spread"] = model.generator_spread()
        if probe_every and (epoch + 1) % probe_every == 0:
            history[-1]["probe_cv"] = _public(
                probe_cv(model, everyone, config.head_ridge)
            )
            aucs = {k: round(v["auc"], 3) for k, v in history[-1]["probe_cv"].items()}
            log.info("probe at epoch %d: CV AUC %s", epoch + 1, aucs)
        if save_grids:
            save_reconstructions(
                out / "recon" / f"epoch_{epoch + 1:03d}.png", model, fixed
            )
            save_loss_curves(out / "losses.png", history)
    trained_probe = probe(model, train, evals, config.head_ridge)
    trained_cv = probe_cv(model, everyone, config.head_ridge)
    difference = compare_probes(trained_cv, random_cv)
    trained_public, random_public = _public(trained_cv), _public(random_cv)
    metrics = {
        "mode": "supervised" if supervised else "central",
        "epochs": epochs,
        "n_train_slices": len(train),
        "history": history,
        "probe_trained": trained_probe,
        "probe_random": random_probe,
        # per feature, both encoders on the same patients and folds, with
        # DeLong's paired CI of the AUC difference
        "probe_cv": {
            name: {
                "random": random_public[name],
                "trained": trained_public[name],
                "difference": difference[name],
            }
            for name in PROBE_FEATURES
        },
        "latent_recovery": {
            "random": random_recovery,
            "trained": model.latent_recovery(),
        },
        # G's diversity against the real slices' (a collapsed G has ~0)
        "generator_spread": {
            "random": random_spread,
            "trained": model.generator_spread(),
            "real": model.image_spread(train.images[:256]),
        },
        "parameters": model.parameter_counts(),
    }
    save_model(model, out / "model.npz")
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out / "metrics.json")
    return metrics

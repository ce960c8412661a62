"""What federation bought, in simulation: the federated head against heads a
single site or a pooled dataset would have, on the same federated encoder.

Only a simulation holds every site's data in one place, so only it can compute
these; they are labelled "not federated". Rows:
- federated lm: the head the SecAgg+ rounds produced;
- pooled lm / SVM / KNN: fitted on all training sites' train splits together (the
  paper's three classifiers; SVM and KNN cannot be fitted from pooled statistics);
- local lm / SVM / KNN (site): each training site's own heads.
Columns: each training site's test split, their union, and every external site
(patient-level AUC with DeLong 95% CI). EXAM-style generalisability of a local
head is its mean AUC on the test data of the sites it did not train on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.evaluation.linear_head import (
    logistic_steps,
    predict,
    solve_standardized,
    standardize,
    standardized_statistics,
    to_raw,
)
from common.evaluation.roc_stats import auc_ci, patient_scores
from simulations.central import concat, pooled_data


def _auc(score, features: np.ndarray, data, how: str) -> dict:
    """Patient AUC with DeLong CI of a head on one test set (NaN when empty, or
    when the head could not be fitted: `score` None)."""
    if len(data) == 0 or score is None:  # e.g. a small site at a small --scale
        return {"auc": float("nan"), "ci": [float("nan")] * 2, "n_patients": 0}
    patient, labels = patient_scores(score(features), data.patient, data.labels, how)
    auc, low, high = auc_ci(patient, labels)
    return {"auc": auc, "ci": [low, high], "n_patients": len(labels)}


def compare(run_dir: Path, config: RunConfig) -> dict:
    """Comparison table of a finished simulated run (added to its metrics.json)."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from common.model.checkpoint import load_model

    model = load_model(run_dir, devices=config.devices, seed=config.seed)
    with np.load(run_dir / "global_weights.npz") as weights:
        federated = weights["head"]
        scale = (weights["head_mean"], weights["head_std"])
        logit = weights.get("logit_head")
    sites = pooled_data(config)
    roster = dict(config.site_roster())
    train_sites = [n for n, role in roster.items() if role == "train"]
    targets = {f"{n} test": sites[n]["test"] for n in train_sites}
    targets["all test"] = concat([sites[n]["test"] for n in train_sites])
    targets.update({n: d["external"] for n, d in sites.items() if "external" in d})
    features = {name: model.encode(data.images) for name, data in targets.items()}
    train = {n: sites[n]["train"] for n in train_sites}
    train_x = {n: model.encode(d.images) for n, d in train.items()}
    pooled_x = np.concatenate(list(train_x.values()))
    pooled_y = np.concatenate([d.labels for d in train.values()])

    def lm(x, y):
        # the federated solve in the run's standardisation (the ridge acts on
        # standardised weights): the centralised counterpart of the SecAgg+ head
        stats, _ = standardized_statistics(x, y, *scale)
        coef = solve_standardized(*stats, *scale, config.head_ridge)
        return lambda f: predict(coef, f)

    def svm(x, y):
        return make_pipeline(StandardScaler(), SVC()).fit(x, y).decision_function

    def knn(x, y):
        k = min(5, len(y))  # a small site at a small --scale has few slices
        fitted = make_pipeline(StandardScaler(), KNeighborsClassifier(k)).fit(x, y)
        return lambda f: fitted.predict_proba(f)[:, 1]

    heads = {
        "federated lm": lambda f: predict(federated, f),
        **(
            {"federated logistic": lambda f: predict(logit, f)}
            if logit is not None
            else {}
        ),
        "pooled lm (not federated)": lm(pooled_x, pooled_y),
        "pooled SVM (not federated)": svm(pooled_x, pooled_y),
        "pooled KNN (not federated)": knn(pooled_x, pooled_y),
    }
    if logit is not None:
        # the same gradient steps on the pooled data: the centralised counterpart
        steps = config.logit_rounds * config.logit_steps
        z = standardize(pooled_x, *scale)
        beta = logistic_steps(
            np.zeros(z.shape[1] + 1),
            z,
            pooled_y,
            steps,
            config.logit_lr,
            config.head_ridge,
        )
        pooled_logit = to_raw(beta, *scale)
        heads["pooled logistic (not federated)"] = lambda f: predict(pooled_logit, f)
    for n in train_sites:
        x, y = train_x[n], train[n].labels
        one_class = len(np.unique(y)) < 2  # nothing to fit: the row stays NaN
        heads[f"local lm ({n})"] = None if one_class else lm(x, y)
        heads[f"local SVM ({n})"] = None if one_class else svm(x, y)
        heads[f"local KNN ({n})"] = None if one_class else knn(x, y)
    table = {
        head: {
            t: _auc(score, features[t], targets[t], config.patient_score)
            for t in targets
        }
        for head, score in heads.items()
    }
    generalisability = {
        n: float(
            np.nanmean(
                [
                    table[f"local lm ({n})"][t]["auc"]
                    for t in targets
                    if t.endswith(" test") and t != f"{n} test"
                ]
                + [table[f"local lm ({n})"][e]["auc"] for e in roster if e in targets]
            )
        )
        for n in train_sites
    }
    return {"table": table, "generalisability": generalisability}


def add_to_run(run_dir: Path, config: RunConfig) -> dict:
    """Compute the comparisons and store them in the run's metrics.json."""
    from server.run_dir import update_metrics

    comparisons = compare(run_dir, config)
    update_metrics(run_dir, comparisons=comparisons)
    return comparisons

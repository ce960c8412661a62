"""Membership-inference smoke test of a simulated run: can an attacker who holds
a slice tell whether it was trained on, from the released model alone?

A simple threshold attack, scored as an AUC (0.5: no better than a coin):
- on the linear head: members have lower squared error (y - score)^2;
- on D (when D was federated): members get a higher "real pair" score
  s_x + s_z + s_xz for (x, E(x)).
Members are the training sites' training slices, non-members their validation
and test slices (same hospitals, same scanners: only membership differs).
Slices of one patient are correlated, so read the AUC as a smoke test, not a
bound. Simulation only: it needs every site's slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.config import FEDERATED_PARTS, RunConfig


def attack_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """AUC of 'higher score means member' (NaN if either set is empty, e.g.
    sites too small to have held-out patients)."""
    from sklearn.metrics import roc_auc_score

    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        return float("nan")

    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(labels, np.r_[member_scores, nonmember_scores]))


def discriminator_scores(model, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """D's total score s_x + s_z + s_xz of the encoder pair (x, E(x))."""
    from common.model.bigbigan import downsample_for_d

    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        z = model.encoder(x, training=False)["z_mean"]
        scores = model.discriminator(
            [downsample_for_d(x, model.preset), z], training=False
        )
        out.append(sum(np.asarray(s, np.float64).ravel() for s in scores))
    return np.concatenate(out) if out else np.zeros(0)


def membership_inference(run_dir: Path, config: RunConfig) -> dict:
    from common.evaluation.linear_head import predict
    from common.model.checkpoint import load_model
    from simulations.central import concat, pooled_data

    model = load_model(run_dir, devices=config.devices, seed=config.seed)
    with np.load(Path(run_dir) / "global_weights.npz") as weights:
        coef = weights["head"]
    sites = pooled_data(config)
    train_sites = [n for n, role in config.site_roster() if role == "train"]
    members = concat([sites[n]["train"] for n in train_sites])
    others = concat([sites[n][s] for n in train_sites for s in ("val", "test")])

    def head_score(data):  # minus the squared error: higher for members
        return -((data.labels - predict(coef, model.encode(data.images))) ** 2)

    result = {
        "n_members": len(members),
        "n_nonmembers": len(others),
        "head_attack_auc": attack_auc(head_score(members), head_score(others)),
        "discriminator_attack_auc": None,
    }
    if "d" in FEDERATED_PARTS[config.federated_parts]:  # else no global D exists
        result["discriminator_attack_auc"] = attack_auc(
            discriminator_scores(model, members.images),
            discriminator_scores(model, others.images),
        )
    return result

"""Does E learn? The trained encoder's linear probe against its own random start.

`train_central` probes z_mean of the encoder before and after BigBiGAN training
with the same probe (the federated head's standardised least squares,
patient-grouped stratified 5-fold CV) on the same patients and folds, and reports
the AUC difference with DeLong's paired 95% CI. The margin asked for here is that
CI's lower bound above 0: the comparison's own patient-sampling uncertainty, on a
paired design (the same init, so encoder-seed spread does not enter).

This is the issue's requirement, and it does not hold at CPU scale (the xfail
reason says what was measured); `strict` makes the test fail the day it starts
to hold, so the marker is removed then.
"""

from __future__ import annotations

import dataclasses

import pytest

from common.config import RunConfig
from simulations.central import train_central
from simulations.phantoms import write_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One mid-lung slice per patient of the full-size study (201 patients)."""
    root = tmp_path_factory.mktemp("learns")
    write_study(root, scale=1.0, seed=0, slices_per_patient=1)
    return root


@pytest.mark.xfail(
    strict=True,
    reason=(
        "BigBiGAN's E does not learn class-relevant features at CPU scale: on the "
        "full phantom study the trained encoder's probe stays within the random "
        "encoders' spread (tiny: up to 3000 steps; small: 15 epochs, "
        "+0.007 [-0.107, +0.122]), latent recovery corr(z, E(G(z))) stays below "
        "0.03, and D's J does not learn to tell matched from shuffled (G(z), z) "
        "pairs within 1500 steps"
    ),
)
def test_bigbigan_training_makes_e_beat_its_random_start(study, tmp_path):
    config = RunConfig(
        gan_rounds=1, sim_data_root=str(study), out_dir=str(tmp_path), seed=0
    )
    # 133 training slices: 8 steps an epoch, 160 steps (~70 s on one CPU thread)
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, local_epochs=20)
    )
    metrics = train_central(tmp_path, config, save_grids=False)
    difference = metrics["probe_difference"]
    assert difference["ci"][0] > 0, difference

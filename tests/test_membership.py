"""The membership-inference smoke test's attack score."""

import numpy as np
import pytest

from common.config import RunConfig
from common.model.gan_training import BigBiGAN
from simulations.membership import attack_auc, discriminator_scores


def test_attack_auc_is_half_without_signal_and_high_with_it():
    rng = np.random.default_rng(0)
    same = attack_auc(rng.normal(size=4000), rng.normal(size=4000))
    assert same == pytest.approx(0.5, abs=0.03)
    leaky = attack_auc(rng.normal(1.0, 1.0, 4000), rng.normal(size=4000))
    assert leaky == pytest.approx(0.76, abs=0.03)  # Phi(1 / sqrt(2))
    assert attack_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_discriminator_scores_one_per_slice_and_batch_independent():
    model = BigBiGAN(RunConfig().model, seed=0)
    images = np.random.default_rng(1).uniform(-1, 1, (10, 64, 64, 3)).astype("float32")
    scores = discriminator_scores(model, images, batch=4)
    assert scores.shape == (10,) and np.isfinite(scores).all()
    assert np.allclose(scores, discriminator_scores(model, images, batch=10), atol=1e-4)


def test_no_held_out_slices_gives_nan_not_a_crash():
    assert np.isnan(attack_auc(np.ones(5), np.zeros(0)))

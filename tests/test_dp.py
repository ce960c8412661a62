"""Site-level DP of the BigBiGAN updates: clipping, noise, and the accountant."""

import math

import numpy as np
import pytest

from common.privacy.dp import clip_and_noise, epsilon


def test_no_noise_clips_to_the_norm_and_keeps_direction():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(40, 30)), rng.normal(size=500)]
    out, norm = clip_and_noise(arrays, 2.0, 0.0, 3, rng)
    assert norm == pytest.approx(math.sqrt(sum((a**2).sum() for a in arrays)))
    assert math.sqrt(sum((a**2).sum() for a in out)) == pytest.approx(2.0)
    for a, b in zip(arrays, out, strict=True):
        assert np.allclose(b, a * 2.0 / norm)
    small = [a * 1e-3 for a in arrays]  # inside the ball: unchanged
    out, _ = clip_and_noise(small, 2.0, 0.0, 3, rng)
    assert all(np.allclose(a, b) for a, b in zip(small, out, strict=True))


def test_noise_has_the_sites_share_of_the_standard_deviation():
    rng = np.random.default_rng(1)
    zeros = [np.zeros((200, 100), np.float32), np.zeros(30000, np.float32)]
    out, _ = clip_and_noise(zeros, 0.5, 2.0, 4, rng)
    values = np.concatenate([a.ravel() for a in out])
    # each of 4 sites adds sd 2.0 * 0.5 / sqrt(4): their sum has sd 2.0 * 0.5
    assert values.std() == pytest.approx(0.5, rel=0.02)
    assert abs(values.mean()) < 0.01 and out[0].dtype == np.float32


def test_epsilon_falls_as_noise_grows_and_rises_with_rounds():
    eps = [epsilon(sigma, 5, 1e-5) for sigma in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(eps[:-1], eps[1:], strict=True))
    assert epsilon(1.0, 10, 1e-5) > epsilon(1.0, 5, 1e-5)
    assert epsilon(1.0, 5, 1e-3) < epsilon(1.0, 5, 1e-5)
    assert math.isinf(epsilon(0.0, 5, 1e-5)) and epsilon(1.0, 0, 1e-5) == 0.0
    # one Gaussian mechanism: the classical bound sigma >= sqrt(2 ln(1.25/d))/eps
    # gives eps <= sqrt(2 ln(1.25e5)) / 4 ~ 1.21; RDP is tighter than that
    assert epsilon(4.0, 1, 1e-5) < math.sqrt(2 * math.log(1.25e5)) / 4.0

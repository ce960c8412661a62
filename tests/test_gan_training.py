"""The BigBiGAN step moves E, G and D, each with its own optimiser."""

import numpy as np

from common.config import TrainConfig, get_preset
from common.gan_training import BigBiGAN


def test_one_epoch_updates_every_player_and_keeps_shapes():
    model = BigBiGAN(get_preset("tiny"), seed=0)
    before = model.get_weights()
    images = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype("float32")
    losses = model.train_epochs(images, TrainConfig(batch_size=4), seed=0)
    assert losses.steps == 2 and np.isfinite([losses.d, losses.e, losses.g]).all()
    for player in (model.encoder, model.generator, model.discriminator):
        moved = [
            not np.allclose(v.numpy(), b)
            for v, b in zip(model.variables, before, strict=True)
            if any(v is w for w in player.trainable_variables)
        ]
        assert any(moved), player.name
    z = model.encode(images)
    assert z.shape == (8, 120)
    model.set_weights(before)
    np.testing.assert_array_equal(model.get_weights()[0], before[0])


def test_without_unary_scores_only_the_joint_score_trains():
    """unary-scores = false is BiGAN's loss: s_x's and s_z's output layers get no
    gradient and keep their weights; the joint score's layer moves."""
    model = BigBiGAN(get_preset("tiny"), seed=0)
    disc = model.discriminator
    heads = {
        name: [w.numpy().copy() for w in disc.get_layer(name).trainable_weights]
        for name in ("s_x", "s_z", "s_xz")
    }
    images = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype("float32")
    config = TrainConfig(batch_size=4, unary_scores=False)
    losses = model.train_epochs(images, config, seed=0)
    assert np.isfinite([losses.d, losses.e, losses.g]).all()
    for name, before in heads.items():
        after = [w.numpy() for w in disc.get_layer(name).trainable_weights]
        unchanged = all(
            np.array_equal(a, b) for a, b in zip(after, before, strict=True)
        )
        assert unchanged == (name != "s_xz"), name

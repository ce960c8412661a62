"""The BigBiGAN step moves E, G and D, each with its own optimiser."""

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from common.config import TrainConfig, get_preset
from common.model.bigbigan import downsample_for_d
from common.model.gan_training import BigBiGAN


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


def _discs(n: int = 16, size: int = 64) -> np.ndarray:
    """Images with structure to learn: a bright disc of random place, radius
    and brightness on a dark field, in [-1, 1]."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    out = np.full((n, size, size, 3), -1.0, np.float32)
    for img in out:
        cy, cx = rng.uniform(16, 48, 2)
        r, level = rng.uniform(6, 16), rng.uniform(0, 1)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = level
    return out


def _trained(config: TrainConfig, steps: int) -> tuple[BigBiGAN, list]:
    """A model after `steps` one-step calls on `_discs()` (one batch each), and
    its discriminator's weights after the first."""
    model = BigBiGAN(get_preset("tiny"), seed=0)
    images = _discs()
    first: list = []
    for seed in range(steps):
        model.train_epochs(images, config, seed=seed)
        first = first or [w.numpy().copy() for w in model.discriminator.weights]
    return model, first


def test_auxiliary_losses_change_e_and_g_only_and_do_what_they_claim():
    """aux-reconstruction and aux-latent enter E's and G's losses and nothing
    else: after one step (D steps first, on the same E and G) D is bit for bit
    the paper's. After 16 steps each lowers the error it names against the
    paper's objective from the same start and seeds."""
    paper = TrainConfig(batch_size=16)  # 16 images: one step per call
    configs = {
        "paper": paper,
        "rec": replace(paper, aux_reconstruction=10.0),
        "lat": replace(paper, aux_latent=10.0),
    }
    runs = {name: _trained(config, 16) for name, config in configs.items()}
    paper_d = runs["paper"][1]
    for name in ("rec", "lat"):
        d_after_one = runs[name][1]
        assert all(
            np.array_equal(a, b) for a, b in zip(d_after_one, paper_d, strict=True)
        )
    models = {name: model for name, (model, _) in runs.items()}
    for name in ("rec", "lat"):  # E and G did move differently
        for player in ("encoder", "generator"):
            mine, theirs = (
                getattr(models[name], player),
                getattr(models["paper"], player),
            )
            assert any(
                not np.array_equal(u.numpy(), v.numpy())
                for u, v in zip(mine.weights, theirs.weights, strict=True)
            ), (name, player)

    images = _discs()

    def reconstruction_error(model: BigBiGAN) -> float:
        small = np.asarray(downsample_for_d(images, model.preset))
        return float(np.mean((model.reconstruct(images) - small) ** 2))

    assert reconstruction_error(models["rec"]) < reconstruction_error(models["paper"])

    def latent_error(model: BigBiGAN) -> float:
        # in training mode, as the loss sees it: after 16 steps BatchNorm's
        # moving statistics are still near their initial values
        z = np.random.default_rng(5).standard_normal((16, 120)).astype("float32")
        x = tf.image.resize(model.generator(z, training=True), (64, 64), "nearest")
        z_hat = model.encoder(x, training=True)["z_mean"]
        return float(np.mean((np.asarray(z_hat) - z) ** 2))

    assert latent_error(models["lat"]) < latent_error(models["paper"])


def test_a_deterministic_encoder_sends_z_mean_alone_and_leaves_z_stdev():
    """encoder-sampling = false puts E's z_mean, not z_mean + z_stdev * noise,
    in D's real pair: z_stdev's layer gets no gradient and keeps its weights,
    while E's z_mean layer, G and D train; on, every E layer moves."""
    images = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype("float32")
    for sampling in (True, False):
        model = BigBiGAN(get_preset("tiny"), seed=0)
        layers = ("z_mean", "z_stdev_pre")
        before = {
            n: [w.numpy().copy() for w in model.encoder.get_layer(n).weights]
            for n in layers
        }
        config = TrainConfig(batch_size=4, encoder_sampling=sampling)
        losses = model.train_epochs(images, config, seed=0)
        assert np.isfinite([losses.d, losses.e, losses.g]).all()
        for name in layers:
            after = [w.numpy() for w in model.encoder.get_layer(name).weights]
            moved = any(
                not np.array_equal(a, b)
                for a, b in zip(after, before[name], strict=True)
            )
            assert moved == (sampling or name == "z_mean"), (sampling, name)


def test_generator_spread_is_zero_for_a_collapsed_g_and_image_spread_reads_real_sd():
    model = BigBiGAN(get_preset("tiny"), seed=0)
    assert model.generator_spread() > 0.05  # an untrained G maps z to noise
    # BatchNorm's scale and offset at 0: the last features, so G(z), ignore z
    bn = model.generator.get_layer("g_bn_out")
    bn.gamma.assign(tf.zeros_like(bn.gamma))
    bn.beta.assign(tf.zeros_like(bn.beta))
    assert model.generator_spread() == 0.0  # one image for every z
    # real slices: each image one grey level, levels spread with SD 0.3
    levels = np.random.default_rng(0).normal(0.0, 0.3, 512).clip(-1, 1)
    images = np.broadcast_to(levels[:, None, None, None], (512, 64, 64, 3))
    assert model.image_spread(images.astype(np.float32)) == pytest.approx(
        levels.std(), abs=1e-5
    )
    assert model.image_spread(np.zeros((8, 64, 64, 3), np.float32)) == 0.0

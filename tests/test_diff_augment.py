"""DiffAugment: D's image inputs go through random, differentiable transforms;
off, training is the paper's bit for bit; E always encodes the untouched x."""

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from common.config import ConfigError, RunConfig, TrainConfig, get_preset
from common.model.diff_augment import augment, parse
from common.model.gan_training import BigBiGAN


def _dots(n: int = 8, size: int = 32) -> tf.Tensor:
    """A bright pixel in the middle of each image, on a field of air (-1)."""
    x = np.full((n, size, size, 1), -1.0, np.float32)
    x[:, size // 2, size // 2] = 1.0
    return tf.constant(x)


def test_translation_moves_each_image_within_an_eighth_of_its_side():
    x = _dots()
    out = augment(x, ("translation",), tf.random.Generator.from_seed(0)).numpy()
    assert out.shape == x.shape
    where = [np.argwhere(img[..., 0] == 1.0) for img in out]
    assert all(len(w) == 1 for w in where)  # the dot survives, the rest is air
    shifts = np.array([w[0] - 16 for w in where])
    assert np.abs(shifts).max() <= 4 and len({tuple(s) for s in shifts}) > 1
    assert set(np.unique(out)) == {-1.0, 1.0}


def test_cutout_sets_one_square_per_image_to_mid_grey():
    x = tf.ones((8, 32, 32, 1))
    out = augment(x, ("cutout",), tf.random.Generator.from_seed(0)).numpy()
    cut = (out == 0.0).sum(axis=(1, 2, 3))
    assert (cut > 0).all() and (cut <= 16 * 16).all()
    assert set(np.unique(out)) == {0.0, 1.0}


def test_color_changes_brightness_and_contrast_per_image():
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 1)), tf.float32)
    out = augment(x, ("color",), tf.random.Generator.from_seed(0)).numpy()
    axes = (1, 2, 3)
    ratio = out.std(axis=axes) / x.numpy().std(axis=axes)
    assert ((ratio >= 0.5 - 1e-5) & (ratio <= 1.5 + 1e-5)).all()
    assert ratio.std() > 0.01
    assert np.abs(out.mean(axis=axes) - x.numpy().mean(axis=axes)).max() > 0.05


def test_every_transform_lets_the_gradient_through_and_follows_the_seed():
    x = tf.constant(np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 1)), tf.float32)
    policies = parse("translation,cutout,color")
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = augment(x, policies, tf.random.Generator.from_seed(3))
        loss = tf.reduce_sum(y * y)
    assert float(tf.reduce_sum(tf.abs(tape.gradient(loss, x)))) > 0
    again = augment(x, policies, tf.random.Generator.from_seed(3))
    np.testing.assert_array_equal(y.numpy(), again.numpy())


def test_diff_augment_is_a_checked_run_config_key():
    config = RunConfig.from_flat({"diff-augment": "translation, cutout"})
    assert parse(config.train.diff_augment) == ("translation", "cutout")
    with pytest.raises(ConfigError, match="diff-augment: unknown \\['flip'\\]"):
        RunConfig.from_flat({"diff-augment": "translation,flip"})


def test_a_step_with_diff_augment_differs_and_repeats_with_its_seed():
    """On, D's inputs change, so the players move differently from the paper's
    step; the same seed gives the same weights (resume stays bit-identical)."""
    images = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype("float32")
    paper = TrainConfig(batch_size=8)
    augmented = replace(paper, diff_augment="translation,cutout,color")

    def trained(config):
        model = BigBiGAN(get_preset("tiny"), seed=0)
        model.train_epochs(images, config, seed=0)
        return model.get_weights()

    a, b, p = trained(augmented), trained(augmented), trained(paper)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(a, p, strict=True))
    assert all(np.isfinite(u).all() for u in a)


def test_the_supervised_ceiling_augments_e_s_inputs_when_asked():
    """In `train-central --supervised` there is no D: diff-augment transforms
    E's inputs; off, the epoch is the unaugmented one bit for bit."""
    from simulations import supervised as sup

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8, 64, 64, 3)).astype("float32")
    labels = np.array([0, 1] * 4)

    def encoder_after_one_epoch(policy: str) -> list[np.ndarray]:
        model = BigBiGAN(get_preset("tiny"), seed=0)
        config = TrainConfig(batch_size=4, diff_augment=policy)
        head = sup.make_head(120, seed=0)
        optimizer = sup.make_optimizer(config, model.encoder, head)
        loss = sup.train_supervised_epoch(
            model.encoder, head, optimizer, images, labels, config, seed=0
        )
        assert np.isfinite(loss)
        return [w.numpy() for w in model.encoder.weights]

    off, off_again = encoder_after_one_epoch(""), encoder_after_one_epoch("")
    on = encoder_after_one_epoch("translation,cutout")
    assert all(np.array_equal(u, v) for u, v in zip(off, off_again, strict=True))
    assert not all(np.array_equal(u, v) for u, v in zip(off, on, strict=True))

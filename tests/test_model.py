"""The BigBiGAN players: shapes, ranges, loss signs, save/restore, schedule."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.config import PRESETS, TrainConfig, get_preset
from common.model.bigbigan import (
    ENCODER_OUTPUTS,
    build_discriminator,
    build_encoder,
    build_generator,
)
from common.model.checkpoint import load_model, save_model
from common.model.gan_training import BigBiGAN
from common.model.losses import discriminator_loss, encoder_generator_loss

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def players():
    keras.utils.set_random_seed(0)
    return build_encoder(TINY), build_generator(TINY), build_discriminator(TINY)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (6, TINY.image_size, TINY.image_size, 3))
    return x.astype("float32"), rng.standard_normal((6, TINY.z_dim)).astype("float32")


def test_every_output_has_the_hub_module_shape_and_range(players, batch):
    encoder, generator, disc = players
    x, z = batch
    out = encoder(x, training=False)
    assert set(out) == set(ENCODER_OUTPUTS)
    trunk = 4 * TINY.enc_depths[-1]
    assert out["z_mean"].shape == (6, 120) and out["z_stdev"].shape == (6, 120)
    assert out["avepool_feat"].shape == (6, trunk)
    assert out["bn_crelu_feat"].shape == (6, 2 * trunk)
    assert float(tf.reduce_min(out["z_stdev"])) > 0  # softplus + floor
    assert float(tf.reduce_min(out["bn_crelu_feat"])) >= 0  # CReLU
    image = generator(z, training=False)
    assert image.shape == (6, TINY.gd_size, TINY.gd_size, 3)
    assert float(tf.reduce_max(tf.abs(image))) <= 1.0  # tanh, like the data
    scores = disc([image, tf.constant(z)], training=False)
    assert [tuple(s.shape) for s in scores] == [(6, 1)] * 3
    assert all(s.dtype == "float32" for s in [*scores, out["z_mean"], image])


def test_presets_scale_up_and_paper_is_biggan_sized():
    small, paper = PRESETS["small"], PRESETS["paper"]
    assert (paper.image_size, paper.gd_size, paper.z_dim) == (256, 128, 120)
    assert paper.enc_units == (3, 4, 6, 3)  # ResNet-50's units
    assert paper.gen_attention == 64 and paper.disc_attention == 64
    tiny_e = build_encoder(TINY).count_params()
    small_e = build_encoder(small).count_params()
    assert tiny_e < small_e


def test_discriminator_loss_falls_when_only_d_trains(players, batch):
    encoder, generator, _ = players
    disc = build_discriminator(TINY)
    x, z = batch
    z_hat = encoder(x, training=False)["z_mean"]
    x_small = tf.image.resize(x, (TINY.gd_size,) * 2, method="area")
    x_fake = generator(z, training=False)
    opt = keras.optimizers.Adam(1e-3)

    def loss():
        real = disc([x_small, z_hat], training=True)
        fake = disc([x_fake, tf.constant(z)], training=True)
        return discriminator_loss(real, fake)

    first = float(loss())
    for _ in range(15):
        with tf.GradientTape() as tape:
            value = loss()
        grads = tape.gradient(value, disc.trainable_variables)
        opt.apply_gradients(zip(grads, disc.trainable_variables, strict=True))
    assert float(loss()) < first - 0.5


def test_encoder_and_generator_losses_fall_against_a_fixed_d(batch):
    keras.utils.set_random_seed(1)
    encoder, generator = build_encoder(TINY), build_generator(TINY)
    disc = build_discriminator(TINY)
    x, z = batch
    x_small = tf.image.resize(x, (TINY.gd_size,) * 2, method="area")
    opt_e, opt_g = keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3)

    def losses():
        real = disc([x_small, encoder(x, training=True)["z_mean"]], training=False)
        fake = disc([generator(z, training=True), tf.constant(z)], training=False)
        return encoder_generator_loss(real, fake)

    first_e, first_g = (float(v) for v in losses())
    for _ in range(15):
        with tf.GradientTape(persistent=True) as tape:
            e_loss, g_loss = losses()
        for opt, loss, model in ((opt_e, e_loss, encoder), (opt_g, g_loss, generator)):
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    e_loss, g_loss = (float(v) for v in losses())
    assert e_loss < first_e and g_loss < first_g


def test_save_and_restore_is_bit_exact(tmp_path, batch):
    model = BigBiGAN(TINY, seed=3)
    x, _ = batch
    path = save_model(model, tmp_path / "model.npz")
    assert not list(tmp_path.glob("*.tmp"))
    restored = load_model(path, seed=99)  # a different init, overwritten
    for a, b in zip(model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.encode(x), restored.encode(x))
    with pytest.raises(ValueError, match="not a fedbigbigan model"):
        np.savez(tmp_path / "other.npz", a=np.zeros(3))
        load_model(tmp_path / "other.npz")


def test_learning_rate_halves_on_schedule_across_rounds(batch):
    model = BigBiGAN(TINY, seed=0)
    x, _ = batch
    config = TrainConfig(batch_size=3, lr_d=4e-4, lr_eg=2e-4, lr_halve_every=2)
    config = dataclasses.replace(config, lr_e_multiplier=10.0)
    model.train_epochs(x, config, seed=0, first_epoch=0)
    assert model.learning_rates() == pytest.approx((4e-4, 2e-3, 2e-4))
    model.train_epochs(x, config, seed=1, first_epoch=4)  # round 5: 2 halvings
    assert model.learning_rates() == pytest.approx((1e-4, 5e-4, 5e-5))


def test_initial_weights_ignore_other_threads_drawing_from_global_random():
    """Flower's heartbeat thread draws its jitter from Python's global `random`
    in every ServerApp and ClientApp process; a draw while a model was being
    built used to give that run other initial weights (a deployment's round 1
    then differed from the Simulation Engine's now and then)."""
    import random
    import threading

    quiet = BigBiGAN(TINY, seed=3).get_weights()
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            random.random()
            stop.wait(1e-4)

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        busy = BigBiGAN(TINY, seed=3).get_weights()
    finally:
        stop.set()
        thread.join()
    other_seed = BigBiGAN(TINY, seed=4).get_weights()
    assert len(busy) == len(quiet)
    assert all(np.array_equal(a, b) for a, b in zip(busy, quiet, strict=True))
    # the seed still matters: every random array differs under another seed
    random_arrays = [i for i, w in enumerate(quiet) if np.std(w) > 0]
    assert len(random_arrays) > 50
    assert not any(np.array_equal(quiet[i], other_seed[i]) for i in random_arrays)

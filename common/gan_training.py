"""BigBiGAN training: the one place where optimisers meet models.

D has its own Adam; E and G have theirs (E's learning rate separately settable).
One `tf.function` step does `d_steps` discriminator updates, then one E/G update.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from common.bigbigan import build_discriminator, build_encoder, build_generator
from common.config import ModelPreset, TrainConfig
from common.losses import discriminator_loss, encoder_generator_loss


@dataclass
class EpochLosses:
    d: float
    e: float
    g: float
    steps: int


class BigBiGAN:
    """E, G, D and their optimisers, with weight import/export for federation."""

    def __init__(self, preset: ModelPreset, seed: int = 0):
        keras.utils.set_random_seed(seed)
        self.preset = preset
        self.encoder = build_encoder(preset)
        self.generator = build_generator(preset)
        self.discriminator = build_discriminator(preset)
        self._optimizers: tuple[keras.optimizers.Optimizer, ...] = ()
        self._step = None
        self._train_config: TrainConfig | None = None
        self._seed_gen = tf.random.Generator.from_seed(seed)

    # -- weights shared with the federation -------------------------------------
    @property
    def variables(self) -> list:
        """Every variable that defines the model (incl. BN statistics and SN u)."""
        return [
            *self.encoder.weights,
            *self.generator.weights,
            *self.discriminator.weights,
        ]

    def get_weights(self) -> list[np.ndarray]:
        return [np.asarray(v.numpy(), dtype=np.float32) for v in self.variables]

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        variables = self.variables
        if len(arrays) != len(variables):
            raise ValueError(
                f"weights: got {len(arrays)} arrays, the {self.preset.name} model "
                f"has {len(variables)}"
            )
        for var, arr in zip(variables, arrays, strict=True):
            if tuple(var.shape) != tuple(arr.shape):
                raise ValueError(
                    f"weights: {var.path} expects shape {tuple(var.shape)}, "
                    f"got {arr.shape}"
                )
            var.assign(arr)

    def parameter_counts(self) -> dict[str, int]:
        return {
            "E": self.encoder.count_params(),
            "G": self.generator.count_params(),
            "D": self.discriminator.count_params(),
        }

    # -- training -----------------------------------------------------------------
    def _build_step(self, config: TrainConfig):
        """Create fresh optimisers and the traced step (once per config)."""
        opt_d = keras.optimizers.Adam(config.lr_d, beta_1=0.0, beta_2=0.999)
        opt_e = keras.optimizers.Adam(
            config.lr_eg * config.lr_e_multiplier, beta_1=0.0, beta_2=0.999
        )
        opt_g = keras.optimizers.Adam(config.lr_eg, beta_1=0.0, beta_2=0.999)
        opt_d.build(self.discriminator.trainable_variables)
        opt_e.build(self.encoder.trainable_variables)
        opt_g.build(self.generator.trainable_variables)
        self._optimizers = (opt_d, opt_e, opt_g)
        encoder, generator, disc = self.encoder, self.generator, self.discriminator
        z_dim, gd_size, d_steps = self.preset.z_dim, self.preset.gd_size, config.d_steps
        noise = self._seed_gen

        def scores(x_real):
            batch = tf.shape(x_real)[0]
            z_mean, z_stdev, _ = encoder(x_real, training=True)
            z_hat = z_mean + z_stdev * noise.normal(tf.shape(z_mean))
            z = noise.normal((batch, z_dim))
            x_fake = generator(z, training=True)
            x_small = tf.image.resize(x_real, (gd_size, gd_size), method="area")
            real = disc([x_small, z_hat], training=True)
            fake = disc([x_fake, z], training=True)
            return real, fake

        @tf.function(reduce_retracing=True)
        def step(x_real):
            d_loss = tf.constant(0.0)
            for _ in tf.range(d_steps):
                with tf.GradientTape() as tape:
                    real, fake = scores(x_real)
                    d_loss = discriminator_loss(real, fake)
                grads = tape.gradient(d_loss, disc.trainable_variables)
                opt_d.apply_gradients(zip(grads, disc.trainable_variables, strict=True))
            with tf.GradientTape(persistent=True) as tape:
                real, fake = scores(x_real)
                e_loss, g_loss = encoder_generator_loss(real, fake)
            e_grads = tape.gradient(e_loss, encoder.trainable_variables)
            g_grads = tape.gradient(g_loss, generator.trainable_variables)
            del tape
            opt_e.apply_gradients(
                zip(e_grads, encoder.trainable_variables, strict=True)
            )
            opt_g.apply_gradients(
                zip(g_grads, generator.trainable_variables, strict=True)
            )
            return d_loss, e_loss, g_loss

        self._step = step
        self._train_config = config

    def reset_optimizers(self) -> None:
        """Start a round with fresh Adam moments (they are never averaged)."""
        for opt in self._optimizers:
            for var in opt.variables:
                var.assign(tf.zeros_like(var))

    def train_epochs(
        self, images: np.ndarray, config: TrainConfig, seed: int
    ) -> EpochLosses:
        """Run `config.local_epochs` passes over `images`; return mean losses."""
        if self._step is None or self._train_config != config:
            self._build_step(config)
        else:
            self.reset_optimizers()
        batch = min(config.batch_size, len(images))
        if batch < 2:
            raise ValueError("training needs at least 2 slices")
        rng = np.random.default_rng(seed)
        totals = np.zeros(3)
        steps = 0
        for _ in range(config.local_epochs):
            order = rng.permutation(len(images))
            for start in range(0, len(order) - batch + 1, batch):
                x = tf.constant(images[order[start : start + batch]])
                totals += [float(v) for v in self._step(x)]
                steps += 1
        d, e, g = totals / max(steps, 1)
        return EpochLosses(d=d, e=e, g=g, steps=steps)

    # -- features -----------------------------------------------------------------
    def encode(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        """z_mean for each image (the paper's 120-d feature)."""
        if len(images) == 0:
            return np.zeros((0, self.preset.z_dim), np.float32)
        out = [
            self.encoder(images[i : i + batch], training=False)[0].numpy()
            for i in range(0, len(images), batch)
        ]
        return np.concatenate(out).astype(np.float64)

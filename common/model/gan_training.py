"""BigBiGAN training: the one place where optimisers meet models.

D has its own Adam; E and G have theirs (E's learning rate separately settable).
One `tf.function` step does `d_steps` discriminator updates, then one E/G update.
The learning rate halves every `lr_halve_every` epochs, counted across rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from common.config import ModelPreset, TrainConfig
from common.devices import DeviceConfig, dtype_policy, strategy_for, wrap_optimizer
from common.model.adabn import adapt_batchnorm
from common.model.bigbigan import (
    build_discriminator,
    build_encoder,
    build_generator,
    downsample_for_d,
)
from common.model.diff_augment import augment, parse
from common.model.layers import seeded_initializers
from common.model.losses import discriminator_loss, encoder_generator_loss


@dataclass
class EpochLosses:
    d: float
    e: float
    g: float
    steps: int


class BigBiGAN:
    """E, G, D and their optimisers, with weight import/export for federation."""

    def __init__(
        self,
        preset: ModelPreset,
        seed: int = 0,
        devices: DeviceConfig | None = None,
        strategy: tf.distribute.Strategy | None = None,
    ):
        keras.utils.set_random_seed(seed)
        self.preset = preset
        self.devices = devices or DeviceConfig()
        # an explicit strategy lets tests mirror over logical CPU devices
        self.strategy = strategy or strategy_for(self.devices)
        with (
            self.strategy.scope(),
            dtype_policy(self.devices),
            seeded_initializers(seed),
        ):
            self.encoder = build_encoder(preset)
            self.generator = build_generator(preset)
            self.discriminator = build_discriminator(preset)
            self._seed_gen = tf.random.Generator.from_seed(seed)
        self._optimizers: tuple[keras.optimizers.Optimizer, ...] = ()
        self._step = None
        self._train_config: TrainConfig | None = None
        self._proximal: tuple[str, ...] = ()
        # FedProx: the global weights a round starts from, per part
        self._anchors: dict[str, list[tf.Variable]] = {}

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
    def _parts(self) -> dict[str, keras.Model]:
        return {"e": self.encoder, "g": self.generator, "d": self.discriminator}

    def _build_step(self, config: TrainConfig, proximal: tuple[str, ...] = ()):
        """Create fresh optimisers and the traced step (once per config).

        `proximal` names the parts (e, g, d) whose losses get FedProx's
        mu/2 ||w - w_global||^2, w_global being the weights a round starts from.
        """
        devices = self.devices
        with self.strategy.scope():
            opt_d = wrap_optimizer(
                keras.optimizers.Adam(config.lr_d, beta_1=0.0, beta_2=0.999), devices
            )
            opt_e = wrap_optimizer(
                keras.optimizers.Adam(
                    config.lr_eg * config.lr_e_multiplier, beta_1=0.0, beta_2=0.999
                ),
                devices,
            )
            opt_g = wrap_optimizer(
                keras.optimizers.Adam(config.lr_eg, beta_1=0.0, beta_2=0.999), devices
            )
            # without the unary scores, s_x's and s_z's layers get no gradient
            unused = () if config.unary_scores else ("s_x", "s_z")
            d_variables = [
                v
                for layer in self.discriminator.layers
                if layer.name not in unused
                for v in layer.trainable_variables
            ]
            opt_d.build(d_variables)
            # a deterministic E's z_stdev gets no gradient
            e_variables = [
                v
                for layer in self.encoder.layers
                if config.encoder_sampling or layer.name != "z_stdev_pre"
                for v in layer.trainable_variables
            ]
            opt_e.build(e_variables)
            opt_g.build(self.generator.trainable_variables)
            self._anchors = {
                part: [
                    tf.Variable(v, trainable=False, name=f"anchor_{part}_{i}")
                    for i, v in enumerate(self._parts()[part].trainable_variables)
                ]
                for part in proximal
            }
        self._optimizers = (opt_d, opt_e, opt_g)
        self._base_rates = (
            config.lr_d,
            config.lr_eg * config.lr_e_multiplier,
            config.lr_eg,
        )
        encoder, generator, disc = self.encoder, self.generator, self.discriminator
        preset, z_dim, d_steps = self.preset, self.preset.z_dim, config.d_steps
        # which of (s_x, s_z, s_xz) enter the losses
        kept = slice(None) if config.unary_scores else slice(2, 3)
        policies = parse(config.diff_augment)  # what D's image inputs go through
        sampling = config.encoder_sampling
        noise = self._seed_gen
        strategy = self.strategy
        replicas = float(strategy.num_replicas_in_sync)
        anchors, mu = self._anchors, config.fedprox_mu

        def with_proximal(loss, part, model):
            # present whenever the part is anchored, even at mu = 0 (then the
            # step is FedAvg's exactly: a test checks it)
            if part not in anchors:
                return loss
            distance = tf.add_n(
                [
                    tf.reduce_sum(tf.square(tf.cast(v, tf.float32) - a))
                    for v, a in zip(
                        model.trainable_variables, anchors[part], strict=True
                    )
                ]
            )
            return loss + tf.cast(0.5 * mu, loss.dtype) * tf.cast(distance, loss.dtype)

        def scores(x_real):
            batch = tf.shape(x_real)[0]
            e_out = encoder(x_real, training=True)
            z_hat = e_out["z_mean"]
            if sampling:  # BigBiGAN's stochastic E; off: BiGAN's deterministic E
                z_hat += e_out["z_stdev"] * noise.normal(tf.shape(z_hat))
            z = noise.normal((batch, z_dim))
            x_fake = generator(z, training=True)
            x_small = tf.cast(downsample_for_d(x_real, preset), x_fake.dtype)
            if policies:  # the same random transforms for real and generated
                x_small = augment(x_small, policies, noise)
                x_fake = augment(x_fake, policies, noise)
            real = disc([x_small, z_hat], training=True)
            fake = disc([x_fake, z], training=True)
            return real[kept], fake[kept]

        w_rec, w_lat = config.aux_reconstruction, config.aux_latent
        size = preset.image_size

        def auxiliary(x_real):
            # reconstruction and latent regression (config.aux_*): 0 when off,
            # and then not even computed
            extra = tf.constant(0.0)
            if w_rec > 0:
                z_x = encoder(x_real, training=True)["z_mean"]
                x_rec = tf.cast(generator(z_x, training=True), tf.float32)
                x_small = tf.cast(downsample_for_d(x_real, preset), tf.float32)
                extra += w_rec * tf.reduce_mean(tf.square(x_rec - x_small))
            if w_lat > 0:
                z = noise.normal((tf.shape(x_real)[0], z_dim))
                x_gen = tf.image.resize(
                    tf.cast(generator(z, training=True), tf.float32),
                    (size, size),
                    method="nearest",
                )
                z_gen = tf.cast(encoder(x_gen, training=True)["z_mean"], tf.float32)
                extra += w_lat * tf.reduce_mean(tf.square(z_gen - z))
            return extra

        def scaled(optimizer, loss):
            # per-replica share of a global batch; dynamic loss scale for float16
            loss = loss / replicas
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                loss = optimizer.scale_loss(loss)
            return loss

        def apply(optimizer, tape, loss, variables):
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables, strict=True))

        def replica_step(x_real):
            d_loss = tf.constant(0.0)
            for _ in range(d_steps):  # unrolled: d_steps is small
                with tf.GradientTape() as tape:
                    real, fake = scores(x_real)
                    d_loss = discriminator_loss(real, fake)
                    d_scaled = scaled(opt_d, with_proximal(d_loss, "d", disc))
                apply(opt_d, tape, d_scaled, d_variables)
            with tf.GradientTape(persistent=True) as tape:
                real, fake = scores(x_real)
                e_loss, g_loss = encoder_generator_loss(real, fake)
                if w_rec > 0 or w_lat > 0:
                    extra = auxiliary(x_real)
                    e_loss += tf.cast(extra, e_loss.dtype)
                    g_loss += tf.cast(extra, g_loss.dtype)
                e_scaled = scaled(opt_e, with_proximal(e_loss, "e", encoder))
                g_scaled = scaled(opt_g, with_proximal(g_loss, "g", generator))
            apply(opt_e, tape, e_scaled, e_variables)
            apply(opt_g, tape, g_scaled, generator.trainable_variables)
            del tape
            return tf.stack([d_loss, e_loss, g_loss])

        if strategy.num_replicas_in_sync > 1:
            # no nested tf.function: the optimisers all-reduce inside the step
            @tf.function(reduce_retracing=True)
            def step(x_real):
                per_replica = strategy.run(replica_step, args=(x_real,))
                return strategy.reduce(
                    tf.distribute.ReduceOp.MEAN, per_replica, axis=None
                )
        else:

            @tf.function(reduce_retracing=True, jit_compile=devices.xla)
            def step(x_real):
                return replica_step(x_real)

        self._step = step
        self._train_config = config
        self._proximal = proximal

    def _set_learning_rates(self, config: TrainConfig, epoch: int) -> None:
        """Halve every `lr_halve_every` epochs (a real schedule, not a Python float)."""
        factor = 1.0
        if config.lr_halve_every > 0:
            factor = 0.5 ** (epoch // config.lr_halve_every)
        for optimizer, base in zip(self._optimizers, self._base_rates, strict=True):
            optimizer.learning_rate = base * factor

    def learning_rates(self) -> tuple[float, ...]:
        """Current (D, E, G) learning rates."""
        return tuple(float(o.learning_rate.numpy()) for o in self._optimizers)

    def reset_optimizers(self) -> None:
        """Start a round with fresh Adam moments (they are never averaged)."""
        for opt in self._optimizers:
            for var in opt.variables:
                var.assign(tf.zeros_like(var))

    def train_epochs(
        self,
        images: np.ndarray,
        config: TrainConfig,
        seed: int,
        first_epoch: int = 0,
        keep_optimizer_state: bool = False,
        proximal: tuple[str, ...] = (),
    ) -> EpochLosses:
        """Run `config.local_epochs` passes over `images`; return mean losses.

        `first_epoch` counts epochs already trained in earlier rounds, so the
        learning-rate schedule continues across a federation's rounds. A round
        starts with fresh Adam moments and a noise stream seeded by `seed` unless
        `keep_optimizer_state` (central runs). `proximal` names the parts that
        FedProx anchors to the weights they start this call with.
        """
        if (
            self._step is None
            or self._train_config != config
            or self._proximal != tuple(proximal)
        ):
            self._build_step(config, tuple(proximal))
        elif not keep_optimizer_state:
            self.reset_optimizers()
        for part, anchors in self._anchors.items():
            for anchor, v in zip(
                anchors, self._parts()[part].trainable_variables, strict=True
            ):
                anchor.assign(tf.cast(v, tf.float32))
        if not keep_optimizer_state:
            # a federated round is a function of (weights, data, seed) alone, so
            # a resumed run repeats what an uninterrupted one would have done
            self._seed_gen.reset_from_seed(seed)
        batch = min(config.batch_size, len(images))
        if batch < 2:
            raise ValueError("training needs at least 2 slices")
        rng = np.random.default_rng(seed)
        totals = np.zeros(3)
        steps = 0
        for epoch in range(config.local_epochs):
            self._set_learning_rates(config, first_epoch + epoch)
            order = rng.permutation(len(images))
            batches = (
                tf.data.Dataset.from_tensor_slices(images[order])
                .batch(batch, drop_remainder=True)
                .prefetch(2)
            )
            for x in self.strategy.experimental_distribute_dataset(batches):
                totals += self._step(x).numpy()
                steps += 1
        d, e, g = totals / max(steps, 1)
        return EpochLosses(d=d, e=e, g=g, steps=steps)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """G(E(x)) at G's resolution: how well E inverts G (a monitor, not a loss)."""
        z = self.encoder(images, training=False)["z_mean"]
        return np.asarray(self.generator(z, training=False), dtype=np.float32)

    def latent_recovery(self, n: int = 256, seed: int = 0) -> float:
        """How well E inverts G: mean over z's dimensions of corr(z, E(G(z))).

        Near 0 for an untrained pair; BigBiGAN's objective drives it up, since D
        can only be fooled when (G(z), z) looks like (x, E(x)).
        """
        z = np.random.default_rng(seed).standard_normal((n, self.preset.z_dim))
        x = self.generator(z.astype(np.float32), training=False)
        size = self.preset.image_size
        x = tf.image.resize(x, (size, size), method="nearest")
        z_hat = self.encode(x.numpy())
        z_c, h_c = z - z.mean(0), z_hat - z_hat.mean(0)
        corr = (z_c * h_c).sum(0) / np.sqrt((z_c**2).sum(0) * (h_c**2).sum(0) + 1e-12)
        return float(corr.mean())

    def generator_spread(self, n: int = 256, seed: int = 0) -> float:
        """G's diversity: the per-pixel SD of G(z) across n draws of z, averaged
        over pixels (on the [-1, 1] scale). It falls towards 0 as G collapses to
        one image; read it against `image_spread` of the real slices."""
        z = np.random.default_rng(seed).standard_normal((n, self.preset.z_dim))
        x = np.asarray(self.generator(z.astype(np.float32), training=False))
        return float(x.std(axis=0).mean())

    def image_spread(self, images: np.ndarray) -> float:
        """`generator_spread`'s reference: the same statistic over real slices,
        seen at D's resolution as D sees them."""
        x = np.asarray(downsample_for_d(tf.constant(images, tf.float32), self.preset))
        return float(x.std(axis=0).mean())

    def adapt_batchnorm(self, images: np.ndarray, batch: int = 64) -> None:
        """AdaBN on E (common.model.adabn): its BatchNorm statistics re-estimated on
        `images`, its other weights kept. For a site whose own statistics were
        never trained (FedBN keeps every training site's at home)."""
        adapt_batchnorm(self.encoder, images, batch)

    # -- features -----------------------------------------------------------------
    def encode(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        """z_mean for each image (the paper's 120-d feature)."""
        return self.encode_all(images, batch, outputs=("z_mean",))["z_mean"]

    def encode_all(
        self,
        images: np.ndarray,
        batch: int = 64,
        outputs: tuple[str, ...] = ("z_mean", "z_stdev", "z_sample", "avepool_feat"),
    ) -> dict[str, np.ndarray]:
        """E's outputs like the hub module's `encode`: z_mean, z_stdev, z_sample
        (mean + stdev * noise), avepool_feat, bn_crelu_feat; float64 arrays."""
        chunks: dict[str, list[np.ndarray]] = {k: [] for k in outputs}
        for i in range(0, len(images), batch):
            out = self.encoder(images[i : i + batch], training=False)
            if "z_sample" in outputs:
                eps = self._seed_gen.normal(tf.shape(out["z_mean"]))
                out = {**out, "z_sample": out["z_mean"] + out["z_stdev"] * eps}
            for key in outputs:
                chunks[key].append(np.asarray(out[key], dtype=np.float64))
        trunk = 4 * self.preset.enc_depths[-1]
        width = {"avepool_feat": trunk, "bn_crelu_feat": 2 * trunk}
        return {
            k: np.concatenate(v)
            if v
            else np.zeros((0, width.get(k, self.preset.z_dim)))
            for k, v in chunks.items()
        }

"""The supervised ceiling: the same encoder architecture trained on the labels,
at the same budget as BigBiGAN's central run (`train-central --supervised`).

E's z_mean feeds one logistic unit; E and that unit are trained with binary
cross-entropy and E's Adam settings for the same epochs and batch size. The
probes afterwards are the usual ones: what a linear head on z_mean reaches when
E was *told* what to encode is an upper reference for what self-supervised
training could give this architecture on this data. Only the held-out splits
(test, the external site) are honest for it: E saw the training labels.

`diff-augment`, which in BigBiGAN's runs transforms D's image inputs, here
transforms E's (there is no D): the same policies, fresh draws per step, so
the ceiling can be measured with and without augmentation.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from common.config import TrainConfig, diff_augment_policies
from common.model.diff_augment import augment


def train_supervised_epoch(
    encoder: keras.Model,
    head: keras.layers.Dense,
    optimizer: keras.optimizers.Optimizer,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    seed: int,
) -> float:
    """One pass over (images, labels) in shuffled batches; the mean loss.
    E's inputs go through `config.diff_augment`'s transforms, drawn from `seed`."""
    order = np.random.default_rng(seed).permutation(len(images))
    batch = min(config.batch_size, len(images))
    policies = diff_augment_policies(config.diff_augment)
    noise = tf.random.Generator.from_seed(seed)
    losses = []
    for start in range(0, len(order) - batch + 1, batch):
        idx = order[start : start + batch]
        x = tf.constant(images[idx])
        if policies:
            x = augment(x, policies, noise)
        y = tf.constant(labels[idx].astype(np.float32)[:, None])
        losses.append(float(_step(encoder, head, optimizer, x, y)))
    return float(np.mean(losses)) if losses else float("nan")


def make_head(z_dim: int, seed: int) -> keras.layers.Dense:
    head = keras.layers.Dense(
        1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed)
    )
    head.build((None, z_dim))
    return head


def make_optimizer(
    config: TrainConfig, encoder: keras.Model, head: keras.layers.Dense
) -> keras.optimizers.Optimizer:
    """E's optimiser settings in BigBiGAN's runs (Adam, beta1 0, E's rate),
    built for E's and the head's variables."""
    optimizer = keras.optimizers.Adam(
        config.lr_eg * config.lr_e_multiplier, beta_1=0.0, beta_2=0.999
    )
    optimizer.build(encoder.trainable_variables + head.trainable_variables)
    return optimizer


@tf.function(reduce_retracing=True)
def _step(encoder, head, optimizer, x, y):
    with tf.GradientTape() as tape:
        z = tf.cast(encoder(x, training=True)["z_mean"], tf.float32)
        logits = head(z)
        loss = tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)
        )
    variables = encoder.trainable_variables + head.trainable_variables
    optimizer.apply_gradients(
        zip(tape.gradient(loss, variables), variables, strict=True)
    )
    return loss

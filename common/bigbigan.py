"""The BigBiGAN players as Keras functional models: encoder E, generator G, D.

Shapes follow the hub module `deepmind/bigbigan-resnet50`: E maps an image in
[-1, 1] to the mean and (softplus) standard deviation of a 120-d Gaussian; G maps z
to an image at `gd_size` with tanh; D scores pairs (x, z) with s_x, s_z and s_xz.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from common.config import ModelPreset
from common.layers import ConditionalBatchNorm, SNConv2D, SNDense


def build_encoder(p: ModelPreset) -> keras.Model:
    """Residual pre-activation encoder -> pooled feature -> MLP -> mean, stdev."""
    x_in = keras.Input((p.image_size, p.image_size, 3), name="x")
    h = layers.Conv2D(p.enc_widths[0], 3, padding="same", name="stem")(x_in)
    for i, width in enumerate(p.enc_widths):
        h = _encoder_block(h, width, name=f"enc_block{i}")
    h = layers.ReLU()(layers.BatchNormalization(name="enc_bn_out")(h))
    pooled = layers.GlobalAveragePooling2D(name="avepool_feat")(h)
    m = layers.Dense(p.enc_mlp, activation="relu", name="mlp0")(pooled)
    m = layers.Dense(p.enc_mlp, activation="relu", name="mlp1")(m)
    z_mean = layers.Dense(p.z_dim, name="z_mean")(m)
    z_stdev = layers.Dense(p.z_dim, name="z_stdev_pre")(m)
    z_stdev = layers.Lambda(lambda s: ops.softplus(s) + 1e-4, name="z_stdev")(z_stdev)
    return keras.Model(x_in, [z_mean, z_stdev, pooled], name="encoder")


def _encoder_block(x, width: int, name: str):
    """Pre-activation residual block that halves the resolution."""
    h = layers.ReLU()(layers.BatchNormalization(name=f"{name}_bn0")(x))
    h = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv0")(h)
    h = layers.ReLU()(layers.BatchNormalization(name=f"{name}_bn1")(h))
    h = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv1")(h)
    h = layers.AveragePooling2D(2, name=f"{name}_pool")(h)
    skip = layers.AveragePooling2D(2)(x)
    skip = layers.Conv2D(width, 1, name=f"{name}_skip")(skip)
    return layers.Add()([h, skip])


def generator_blocks(p: ModelPreset) -> int:
    """Number of 2x up-blocks from 4x4 to gd_size."""
    blocks, size = 0, 4
    while size < p.gd_size:
        size, blocks = size * 2, blocks + 1
    return blocks


def build_generator(p: ModelPreset) -> keras.Model:
    """BigGAN-style G: z split into chunks, one for the input, one per up-block."""
    n_blocks = generator_blocks(p)
    z_in = keras.Input((p.z_dim,), name="z")
    chunk = p.z_dim // (n_blocks + 1)
    chunks = [z_in[:, i * chunk : (i + 1) * chunk] for i in range(n_blocks)]
    chunks.insert(0, z_in[:, n_blocks * chunk :])  # the remainder feeds the stem
    widths = [p.gen_width * 2 ** (n_blocks - i) for i in range(n_blocks + 1)]
    h = SNDense(4 * 4 * widths[0], name="g_linear")(chunks[0])
    h = layers.Reshape((4, 4, widths[0]))(h)
    for i in range(n_blocks):
        h = _generator_block(h, chunks[i + 1], widths[i + 1], name=f"g_block{i}")
    h = layers.ReLU()(layers.BatchNormalization(name="g_bn_out")(h))
    image = SNConv2D(3, name="g_to_rgb")(h)
    image = layers.Activation("tanh", name="image")(image)
    return keras.Model(z_in, image, name="generator")


def _generator_block(x, z_chunk, width: int, name: str):
    h = layers.ReLU()(ConditionalBatchNorm(name=f"{name}_cbn0")([x, z_chunk]))
    h = layers.UpSampling2D()(h)
    h = SNConv2D(width, name=f"{name}_conv0")(h)
    h = layers.ReLU()(ConditionalBatchNorm(name=f"{name}_cbn1")([h, z_chunk]))
    h = SNConv2D(width, name=f"{name}_conv1")(h)
    skip = SNConv2D(width, kernel_size=1, name=f"{name}_skip")(layers.UpSampling2D()(x))
    return layers.Add()([h, skip])


def build_discriminator(p: ModelPreset) -> keras.Model:
    """D = F(x), H(z), J(F, H) with linear scores s_x, s_z, s_xz (one [x, z] input)."""
    x_in = keras.Input((p.gd_size, p.gd_size, 3), name="x")
    z_in = keras.Input((p.z_dim,), name="z")
    # F: residual down-blocks, ReLU, global sum pooling (as BigGAN's D)
    h = x_in
    for i, width in enumerate(p.disc_widths):
        h = _discriminator_block(h, width, first=(i == 0), name=f"f_block{i}")
    f = layers.Lambda(lambda t: ops.sum(ops.relu(t), axis=(1, 2)), name="f_out")(h)
    # H: MLP over z
    hz = z_in
    for i in range(2):
        hz = layers.ReLU()(SNDense(p.disc_mlp, name=f"h_dense{i}")(hz))
    # J: MLP over [F, H]
    j = layers.Concatenate()([f, hz])
    for i in range(2):
        j = layers.ReLU()(SNDense(p.disc_mlp, name=f"j_dense{i}")(j))
    s_x = SNDense(1, name="s_x")(f)
    s_z = SNDense(1, name="s_z")(hz)
    s_xz = SNDense(1, name="s_xz")(j)
    return keras.Model([x_in, z_in], [s_x, s_z, s_xz], name="discriminator")


def _discriminator_block(x, width: int, first: bool, name: str):
    h = x if first else layers.ReLU()(x)
    h = SNConv2D(width, name=f"{name}_conv0")(h)
    h = SNConv2D(width, name=f"{name}_conv1")(layers.ReLU()(h))
    h = layers.AveragePooling2D(2)(h)
    skip = SNConv2D(width, kernel_size=1, name=f"{name}_skip")(x)
    return layers.Add()([h, layers.AveragePooling2D(2)(skip)])

"""The BigBiGAN players as Keras functional models: encoder E, generator G, D.

Shapes follow the hub module `deepmind/bigbigan-resnet50`: E maps an image in
[-1, 1] to the mean and (softplus) standard deviation of a 120-d Gaussian plus the
pooled trunk features; G maps z to an image at `gd_size` with tanh; D scores pairs
(x, z) with s_x, s_z and s_xz. Layer names are stable: `common/model/hub.py` maps the
hub module's checkpoint onto them. Outputs that feed a loss are float32 so mixed
precision changes only the compute dtype inside the players.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from common.config import ModelPreset
from common.model.layers import (
    ConditionalBatchNorm,
    SelfAttention,
    SNConv2D,
    SNDense,
    initializer,
)

ENCODER_OUTPUTS = ("z_mean", "z_stdev", "avepool_feat", "bn_crelu_feat")
BN_EPSILON = 1e-5  # tf-slim resnet_v2's value, so hub weights mean the same here
BN_MOMENTUM = 0.997


def _dense(units: int, **kwargs) -> layers.Dense:
    return layers.Dense(
        units, kernel_initializer=initializer("GlorotUniform"), **kwargs
    )


def _conv(filters: int, k: int, **kwargs) -> layers.Conv2D:
    return layers.Conv2D(
        filters, k, kernel_initializer=initializer("GlorotUniform"), **kwargs
    )


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name
    )


# -- E --------------------------------------------------------------------------
def build_encoder(p: ModelPreset) -> keras.Model:
    """ResNet-v2 trunk -> average pool -> BN + CReLU -> MLP -> mean, stdev."""
    x_in = keras.Input((p.image_size, p.image_size, 3), name="x")
    h = _strided_conv(x_in, p.enc_stem, 7, 2, use_bias=True, name="stem_conv")
    h = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(h)
    last_stage = len(p.enc_depths)
    for s, (depth, units) in enumerate(
        zip(p.enc_depths, p.enc_units, strict=True), start=1
    ):
        for u in range(1, units + 1):
            # tf-slim v2 puts each stage's stride on its last unit
            stride = 2 if (u == units and s < last_stage) else 1
            h = _bottleneck(h, depth, stride, name=f"block{s}_unit{u}")
    h = layers.ReLU()(_bn("postnorm")(h))
    pooled = layers.GlobalAveragePooling2D(name="avepool_feat")(h)
    b = _bn("bn_crelu_bn")(pooled)
    crelu = layers.Lambda(_crelu, name="bn_crelu_feat")(b)
    m = crelu
    for i in range(p.enc_mlp_layers):
        out = _dense(p.enc_mlp, activation="relu", name=f"mlp{i}")(m)
        m = layers.Add()([m, out]) if m.shape[-1] == p.enc_mlp else out
    z_mean = _dense(p.z_dim, dtype="float32", name="z_mean")(m)
    z_stdev = _dense(p.z_dim, dtype="float32", name="z_stdev_pre")(m)
    z_stdev = layers.Activation(_softplus_floor, dtype="float32", name="z_stdev")(
        z_stdev
    )
    pooled32 = layers.Activation("linear", dtype="float32", name="avepool_out")(pooled)
    crelu32 = layers.Activation("linear", dtype="float32", name="crelu_out")(crelu)
    outputs = dict(
        zip(ENCODER_OUTPUTS, (z_mean, z_stdev, pooled32, crelu32), strict=True)
    )
    return keras.Model(x_in, outputs, name="encoder")


def _crelu(t):
    """Concatenated ReLU: keeps the sign information a plain ReLU drops."""
    return ops.concatenate([ops.relu(t), ops.relu(-t)], axis=-1)


def _softplus_floor(s):
    """Softplus with a floor, so the encoder never becomes deterministic."""
    return ops.softplus(s) + 1e-4


def _strided_conv(x, filters: int, k: int, stride: int, use_bias: bool, name: str):
    """tf-slim's conv2d_same: a strided conv pads evenly (Keras 'same' would pad
    only after), so weights from the hub module see the same pixels."""
    if stride == 1:
        return _conv(filters, k, padding="same", use_bias=use_bias, name=name)(x)
    before = (k - 1) // 2
    x = layers.ZeroPadding2D(((before, k - 1 - before),) * 2)(x)
    return _conv(filters, k, strides=stride, use_bias=use_bias, name=name)(x)


def _bottleneck(x, depth: int, stride: int, name: str):
    """Pre-activation bottleneck unit (1x1 -> 3x3 -> 1x1, 4x depth out)."""
    out_channels = 4 * depth
    pre = layers.ReLU()(_bn(f"{name}_preact")(x))
    if x.shape[-1] == out_channels:
        shortcut = layers.MaxPooling2D(1, strides=stride)(x) if stride > 1 else x
    else:
        shortcut = _conv(out_channels, 1, strides=stride, name=f"{name}_shortcut")(pre)
    h = _conv(depth, 1, use_bias=False, name=f"{name}_conv1")(pre)
    h = layers.ReLU()(_bn(f"{name}_conv1_bn")(h))
    h = _strided_conv(h, depth, 3, stride, use_bias=False, name=f"{name}_conv2")
    h = layers.ReLU()(_bn(f"{name}_conv2_bn")(h))
    h = _conv(out_channels, 1, name=f"{name}_conv3")(h)
    return layers.Add()([shortcut, h])


def downsample_for_d(x, p: ModelPreset):
    """Real images at D's resolution by average pooling (BigBiGAN: 256 -> 128).

    Average pooling by the integer factor equals area resizing here and, unlike
    ResizeArea, compiles with XLA.
    """
    factor = p.image_size // p.gd_size
    if factor * p.gd_size != p.image_size:
        raise ValueError(
            f"preset {p.name}: image_size must be a multiple of gd_size, got "
            f"{p.image_size} and {p.gd_size}"
        )
    return ops.average_pool(x, factor, factor) if factor > 1 else x


# -- G --------------------------------------------------------------------------
def generator_blocks(p: ModelPreset) -> int:
    """Number of 2x up-blocks from 4x4 to gd_size."""
    blocks, size = 0, 4
    while size < p.gd_size:
        size, blocks = size * 2, blocks + 1
    if size != p.gd_size or len(p.gen_mults) != blocks + 1:
        raise ValueError(
            f"preset {p.name}: gd_size {p.gd_size} needs {blocks} up-blocks from 4x4 "
            f"and {blocks + 1} gen_mults, got {len(p.gen_mults)}"
        )
    return blocks


def build_generator(p: ModelPreset) -> keras.Model:
    """BigGAN G: z split into chunks, one for the input, one per up-block's CBN."""
    n_blocks = generator_blocks(p)
    z_in = keras.Input((p.z_dim,), name="z")
    chunk = p.z_dim // (n_blocks + 1)
    # the first chunk (plus any remainder) feeds the linear stem
    stem_len = p.z_dim - n_blocks * chunk
    z_stem = layers.Lambda(lambda z: z[:, :stem_len], name="z_stem")(z_in)
    widths = [p.gen_ch * m for m in p.gen_mults]
    h = SNDense(4 * 4 * widths[0], name="g_linear")(z_stem)
    h = layers.Reshape((4, 4, widths[0]))(h)
    size = 4
    for i in range(n_blocks):
        start = stem_len + i * chunk
        z_i = layers.Lambda(lambda z, a=start: z[:, a : a + chunk], name=f"z_chunk{i}")(
            z_in
        )
        h = _generator_block(h, z_i, widths[i + 1], name=f"g_block{i}")
        size *= 2
        if size == p.gen_attention:
            h = SelfAttention(name="g_attention")(h)
    h = layers.ReLU()(layers.BatchNormalization(name="g_bn_out")(h))
    image = SNConv2D(3, name="g_to_rgb")(h)
    image = layers.Activation("tanh", dtype="float32", name="image")(image)
    return keras.Model(z_in, image, name="generator")


def _generator_block(x, z_chunk, width: int, name: str):
    h = layers.ReLU()(ConditionalBatchNorm(name=f"{name}_cbn0")([x, z_chunk]))
    h = layers.UpSampling2D()(h)
    h = SNConv2D(width, name=f"{name}_conv0")(h)
    h = layers.ReLU()(ConditionalBatchNorm(name=f"{name}_cbn1")([h, z_chunk]))
    h = SNConv2D(width, name=f"{name}_conv1")(h)
    skip = SNConv2D(width, kernel_size=1, name=f"{name}_skip")(layers.UpSampling2D()(x))
    return layers.Add()([h, skip])


# -- D --------------------------------------------------------------------------
def build_discriminator(p: ModelPreset) -> keras.Model:
    """D = F(x), H(z), J(F, H) with linear scores s_x, s_z, s_xz (one [x, z] input).

    F is BigGAN's D trunk (every block halves the size except the last); H and J
    are MLPs with skip connections. Scores are float32.
    """
    x_in = keras.Input((p.gd_size, p.gd_size, 3), name="x")
    z_in = keras.Input((p.z_dim,), name="z")
    h, size = x_in, p.gd_size
    last = len(p.disc_mults) - 1
    for i, mult in enumerate(p.disc_mults):
        down = i < last
        h = _discriminator_block(
            h, p.disc_ch * mult, first=(i == 0), down=down, name=f"f_block{i}"
        )
        size = size // 2 if down else size
        if size == p.disc_attention:
            h = SelfAttention(name="f_attention")(h)
    f = layers.Lambda(lambda t: ops.sum(ops.relu(t), axis=(1, 2)), name="f_out")(h)
    hz = _mlp(z_in, p.disc_mlp, p.disc_mlp_layers, name="h")
    j = _mlp(layers.Concatenate()([f, hz]), p.disc_mlp, p.disc_mlp_layers, name="j")
    s_x = SNDense(1, dtype="float32", name="s_x")(f)
    s_z = SNDense(1, dtype="float32", name="s_z")(hz)
    s_xz = SNDense(1, dtype="float32", name="s_xz")(j)
    return keras.Model([x_in, z_in], [s_x, s_z, s_xz], name="discriminator")


def _mlp(x, width: int, n_layers: int, name: str):
    """ReLU MLP; layers after the first add their input back (skip connection)."""
    for i in range(n_layers):
        out = layers.ReLU()(SNDense(width, name=f"{name}_dense{i}")(x))
        x = layers.Add()([x, out]) if i > 0 else out
    return x


def _discriminator_block(x, width: int, first: bool, down: bool, name: str):
    h = x if first else layers.ReLU()(x)
    h = SNConv2D(width, name=f"{name}_conv0")(h)
    h = SNConv2D(width, name=f"{name}_conv1")(layers.ReLU()(h))
    skip = x
    if down:
        h = layers.AveragePooling2D(2)(h)
    if x.shape[-1] != width or down:
        skip = SNConv2D(width, kernel_size=1, name=f"{name}_skip")(x)
        skip = layers.AveragePooling2D(2)(skip) if down else skip
    return layers.Add()([h, skip])

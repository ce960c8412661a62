"""Building blocks shared by E, G and D: seeded initializers, spectral norm and
conditional BatchNorm."""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections.abc import Iterator

import keras
from keras import ops

# Unseeded Keras initializers draw their seeds from Python's global `random`,
# which other threads use too (Flower's heartbeat thread draws its jitter from
# it in every ServerApp and ClientApp process): a model built while one fired got
# other initial weights. Builders draw seeds from this private stream instead.
_SEEDS: contextvars.ContextVar[random.Random | None] = contextvars.ContextVar(
    "initializer_seeds", default=None
)


@contextlib.contextmanager
def seeded_initializers(seed: int) -> Iterator[None]:
    """Within this block (and thread), every initializer `initializer()` makes
    is seeded from one stream started at `seed`: the built weights are a
    function of `seed` and the build order alone."""
    token = _SEEDS.set(random.Random(seed))
    try:
        yield
    finally:
        _SEEDS.reset(token)


def _next_seed() -> int | None:
    stream = _SEEDS.get()
    return None if stream is None else stream.randint(1, 10**9)


def initializer(name: str) -> keras.initializers.Initializer:
    """Keras initializer `name` with the next seed of the active stream
    (unseeded, Keras's default, outside `seeded_initializers`)."""
    return keras.initializers.get(
        {"class_name": name, "config": {"seed": _next_seed()}}
    )


class _SpectralNormKernel(keras.layers.Layer):
    """Base for layers whose kernel is divided by its largest singular value.

    As in BigGAN, sigma comes from one power iteration per training call with a
    persistent vector u; gradients flow through W / sigma(W) (u and v are constants).
    """

    def _add_u(self, out_dim: int) -> None:
        self.u = self.add_weight(
            shape=(1, out_dim),
            initializer=_UnitVector(_next_seed()),
            trainable=False,
            name="sn_u",
        )

    def _normalized(self, kernel, training: bool):
        # the power iteration runs in float32 even under mixed precision
        matrix = ops.cast(ops.reshape(kernel, (-1, kernel.shape[-1])), "float32")
        u = ops.cast(self.u, "float32")
        v = _l2_normalize(ops.matmul(u, ops.transpose(matrix)))
        u_new = _l2_normalize(ops.matmul(v, matrix))
        u_new = ops.stop_gradient(u_new)
        v = ops.stop_gradient(v)
        sigma = ops.sum(ops.matmul(v, matrix) * u_new)
        if training:
            self.u.assign(ops.cast(u_new, self.u.dtype))
        return kernel / ops.cast(sigma, kernel.dtype)


class _UnitVector(keras.initializers.Initializer):
    """A random unit vector: u lives on the sphere from the start."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        return _l2_normalize(keras.random.normal(shape, dtype=dtype, seed=self.seed))

    def get_config(self):
        return {"seed": self.seed}


def _l2_normalize(x, eps: float = 1e-12):
    return x / ops.sqrt(ops.sum(x * x) + eps)


class SNConv2D(_SpectralNormKernel):
    """3x3 (or k x k) 'same' convolution with a spectrally normalised kernel."""

    def __init__(
        self, filters: int, kernel_size: int = 3, use_bias: bool = True, **kwargs
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.use_bias = use_bias

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self.add_weight(
            shape=(k, k, input_shape[-1], self.filters),
            initializer=initializer("Orthogonal"),
            name="kernel",
        )
        self.bias = (
            self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
            if self.use_bias
            else None
        )
        self._add_u(self.filters)

    def call(self, x, training=False):
        out = ops.conv(x, self._normalized(self.kernel, training), padding="same")
        return out if self.bias is None else out + self.bias

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "use_bias": self.use_bias,
        }


class SNDense(_SpectralNormKernel):
    """Dense layer with a spectrally normalised kernel."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units),
            initializer=initializer("Orthogonal"),
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.units,), initializer="zeros", name="bias"
        )
        self._add_u(self.units)

    def call(self, x, training=False):
        return ops.matmul(x, self._normalized(self.kernel, training)) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class SelfAttention(keras.layers.Layer):
    """SAGAN self-attention as in BigGAN: x + gamma * attention(x), gamma from 0."""

    def build(self, input_shape):
        channels = input_shape[-1]
        self.theta = SNConv2D(
            channels // 8, kernel_size=1, use_bias=False, name="theta"
        )
        self.phi = SNConv2D(channels // 8, kernel_size=1, use_bias=False, name="phi")
        self.g = SNConv2D(channels // 2, kernel_size=1, use_bias=False, name="g")
        self.o = SNConv2D(channels, kernel_size=1, use_bias=False, name="o")
        self.gamma = self.add_weight(shape=(), initializer="zeros", name="gamma")

    def call(self, x, training=False):
        _, height, width, channels = x.shape
        theta = ops.reshape(
            self.theta(x, training=training), (-1, height * width, channels // 8)
        )
        phi = ops.max_pool(self.phi(x, training=training), 2, 2)
        phi = ops.reshape(phi, (-1, height * width // 4, channels // 8))
        g = ops.max_pool(self.g(x, training=training), 2, 2)
        g = ops.reshape(g, (-1, height * width // 4, channels // 2))
        attention = ops.softmax(
            ops.matmul(theta, ops.transpose(phi, (0, 2, 1))), axis=-1
        )
        out = ops.reshape(ops.matmul(attention, g), (-1, height, width, channels // 2))
        return x + ops.cast(self.gamma, x.dtype) * self.o(out, training=training)


class ConditionalBatchNorm(keras.layers.Layer):
    """BatchNorm whose gain and bias come from a latent chunk (BigGAN's G)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.BatchNormalization(
            center=False, scale=False, name="bn"
        )

    def build(self, input_shapes):
        x_shape, _ = input_shapes
        channels = x_shape[-1]
        self.gain = SNDense(channels, name="gain")
        self.offset = SNDense(channels, name="offset")

    def call(self, inputs, training=False):
        x, z = inputs
        gain = 1.0 + self.gain(z, training=training)[:, None, None, :]
        offset = self.offset(z, training=training)[:, None, None, :]
        return self.norm(x, training=training) * gain + offset

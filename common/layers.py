"""Building blocks shared by E, G and D: spectral norm and conditional BatchNorm."""

from __future__ import annotations

import keras
from keras import ops


class _SpectralNormKernel(keras.layers.Layer):
    """Base for layers whose kernel is divided by its largest singular value.

    As in BigGAN, sigma comes from one power iteration per training call with a
    persistent vector u; gradients flow through W / sigma(W) (u and v are constants).
    """

    def _add_u(self, out_dim: int) -> None:
        self.u = self.add_weight(
            shape=(1, out_dim),
            initializer=_unit_vector,
            trainable=False,
            name="sn_u",
        )

    def _normalized(self, kernel, training: bool):
        matrix = ops.reshape(kernel, (-1, kernel.shape[-1]))
        u = ops.convert_to_tensor(self.u)
        v = _l2_normalize(ops.matmul(u, ops.transpose(matrix)))
        u_new = _l2_normalize(ops.matmul(v, matrix))
        u_new = ops.stop_gradient(u_new)
        v = ops.stop_gradient(v)
        sigma = ops.sum(ops.matmul(v, matrix) * u_new)
        if training:
            self.u.assign(u_new)
        return kernel / sigma


def _unit_vector(shape, dtype=None):
    """A random unit vector: u lives on the sphere from the start."""
    return _l2_normalize(keras.random.normal(shape, dtype=dtype))


def _l2_normalize(x, eps: float = 1e-12):
    return x / ops.sqrt(ops.sum(x * x) + eps)


class SNConv2D(_SpectralNormKernel):
    """3x3 (or k x k) 'same' convolution with a spectrally normalised kernel."""

    def __init__(self, filters: int, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self.add_weight(
            shape=(k, k, input_shape[-1], self.filters),
            initializer="orthogonal",
            name="kernel",
        )
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros")
        self._add_u(self.filters)

    def call(self, x, training=False):
        kernel = self._normalized(self.kernel, training)
        return ops.conv(x, kernel, padding="same") + self.bias

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
        }


class SNDense(_SpectralNormKernel):
    """Dense layer with a spectrally normalised kernel."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="orthogonal", name="kernel"
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros")
        self._add_u(self.units)

    def call(self, x, training=False):
        return ops.matmul(x, self._normalized(self.kernel, training)) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class ConditionalBatchNorm(keras.layers.Layer):
    """BatchNorm whose gain and bias come from a latent chunk (BigGAN's G)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.BatchNormalization(center=False, scale=False)

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

"""A small stand-in for DeepMind's BigBiGAN TF Hub module, built by the tests.

TF1 Hub format like the real module: a tf.compat.v1 graph (`get_variable` + `tf.nn`
ops) saved by `saved_model.Builder` with the tag sets [] (inference) and ["train"]
(BatchNorm on batch statistics), plus a `tfhub_module.pb` marker; signatures
`encode`, `generate` and `discriminate` with the real input and output keys.

The encoder computes exactly what `common.model.bigbigan.build_encoder` computes for the
same preset, with variables named as tf-slim's resnet_v2_50 names them (written out
here scope by scope, not taken from common.model.hub's table, so the name table is
tested rather than repeated). G and D are tiny placeholders with the real signatures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from common.config import ModelPreset

v1 = tf.compat.v1
BN_EPSILON = 1e-5  # tf-slim resnet_v2


class _Graph:
    """Variables with deterministic random values; ops on batch or moving statistics."""

    def __init__(self, seed: int, train: bool, use_resource: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.train = train
        self.use_resource = use_resource

    def var(self, name: str, value: np.ndarray, trainable: bool = True) -> tf.Tensor:
        return v1.get_variable(
            name,
            initializer=value.astype(np.float32),
            trainable=trainable,
            use_resource=self.use_resource,
        )

    def conv(self, x, name: str, k: int, out: int, stride: int = 1, bias: bool = True):
        with v1.variable_scope(name):
            fan_in = k * k * x.shape[-1]
            w = self.var(
                "weights",
                self.rng.normal(0, (2 / fan_in) ** 0.5, (k, k, x.shape[-1], out)),
            )
            if stride > 1 and k > 1:  # tf-slim's conv2d_same: explicit, even padding
                pad = [(k - 1) // 2, k - 1 - (k - 1) // 2]
                x = tf.pad(x, [[0, 0], pad, pad, [0, 0]])
                y = tf.nn.conv2d(x, w, stride, "VALID")
            else:
                y = tf.nn.conv2d(x, w, stride, "SAME")
            if bias:
                y = y + self.var("biases", self.rng.normal(0, 0.1, out))
        return y

    def dense(self, x, name: str, out: int):
        with v1.variable_scope(name):
            fan_in = x.shape[-1]
            w = self.var(
                "kernel", self.rng.normal(0, (1 / fan_in) ** 0.5, (fan_in, out))
            )
            return tf.matmul(x, w) + self.var("bias", self.rng.normal(0, 0.1, out))

    def batch_norm(self, x, name: str):
        """tf-slim batch_norm (scale=True) with non-trivial statistics."""
        n = x.shape[-1]
        with v1.variable_scope(name):
            gamma = self.var("gamma", self.rng.uniform(0.5, 1.5, n))
            beta = self.var("beta", self.rng.normal(0, 0.1, n))
            mean = self.var("moving_mean", self.rng.normal(0, 0.2, n), trainable=False)
            var = self.var("moving_variance", self.rng.uniform(0.5, 2.0, n), False)
        if self.train:
            mean, var = tf.nn.moments(x, list(range(len(x.shape) - 1)))
        return tf.nn.batch_normalization(x, mean, var, beta, gamma, BN_EPSILON)


def _encoder(g: _Graph, x, p: ModelPreset) -> dict[str, tf.Tensor]:
    with v1.variable_scope("encoder"):
        with v1.variable_scope("resnet_v2_50"):
            h = g.conv(x, "conv1", 7, p.enc_stem, stride=2)
            h = tf.nn.max_pool2d(h, 3, 2, "SAME")
            for s, (depth, units) in enumerate(
                zip(p.enc_depths, p.enc_units, strict=True), start=1
            ):
                with v1.variable_scope(f"block{s}"):
                    for u in range(1, units + 1):
                        stride = 2 if (u == units and s < len(p.enc_depths)) else 1
                        with v1.variable_scope(f"unit_{u}/bottleneck_v2"):
                            h = _bottleneck(g, h, depth, stride)
            h = tf.nn.relu(g.batch_norm(h, "postnorm"))
        pooled = tf.reduce_mean(h, axis=[1, 2])
        with v1.variable_scope("bn_crelu"):
            b = g.batch_norm(pooled, "BatchNorm")
        crelu = tf.concat([tf.nn.relu(b), tf.nn.relu(-b)], axis=-1)
        m = crelu
        for i in range(p.enc_mlp_layers):
            with v1.variable_scope(f"mlp{i}"):
                out = tf.nn.relu(g.dense(m, "dense", p.enc_mlp))
            m = m + out if m.shape[-1] == p.enc_mlp else out
        with v1.variable_scope("z_mean"):
            z_mean = g.dense(m, "dense", p.z_dim)
        with v1.variable_scope("z_stdev"):
            z_stdev = tf.nn.softplus(g.dense(m, "dense", p.z_dim)) + 1e-4
    z_sample = z_mean + z_stdev * tf.random.normal(tf.shape(z_mean))
    return {
        "z_mean": z_mean,
        "z_stdev": z_stdev,
        "z_sample": z_sample,
        "avepool_feat": pooled,
        "bn_crelu_feat": crelu,
        "default": z_sample,
    }


def _bottleneck(g: _Graph, x, depth: int, stride: int):
    """tf-slim resnet_v2 bottleneck (strided 3x3 padded evenly, as conv2d_same)."""
    out_channels = 4 * depth
    pre = tf.nn.relu(g.batch_norm(x, "preact"))
    if x.shape[-1] == out_channels:
        shortcut = tf.nn.max_pool2d(x, 1, stride, "SAME") if stride > 1 else x
    else:
        shortcut = g.conv(pre, "shortcut", 1, out_channels, stride=stride)
    h = g.conv(pre, "conv1", 1, depth, bias=False)
    h = tf.nn.relu(g.batch_norm(h, "conv1/BatchNorm"))
    h = g.conv(h, "conv2", 3, depth, stride=stride, bias=False)
    h = tf.nn.relu(g.batch_norm(h, "conv2/BatchNorm"))
    h = g.conv(h, "conv3", 1, out_channels)
    return shortcut + h


def _generator(g: _Graph, z, p: ModelPreset) -> dict[str, tf.Tensor]:
    with v1.variable_scope("generator"):
        h = tf.reshape(g.dense(z, "linear", 4 * 4 * 8), [-1, 4, 4, 8])
        h = tf.image.resize(tf.nn.relu(g.batch_norm(h, "bn")), (p.gd_size, p.gd_size))
        image = tf.tanh(g.conv(h, "to_rgb", 3, 3))
    size = 2 * p.gd_size
    return {"default": image, "upsampled": tf.image.resize(image, (size, size))}


def _discriminator(g: _Graph, x, z) -> dict[str, tf.Tensor]:
    with v1.variable_scope("discriminator"):
        f = tf.reduce_sum(tf.nn.relu(g.conv(x, "f_conv", 3, 8, stride=2)), axis=[1, 2])
        hz = tf.nn.relu(g.dense(z, "h_dense", 16))
        j = tf.nn.relu(g.dense(tf.concat([f, hz], -1), "j_dense", 16))
        return {
            "score_x": tf.squeeze(g.dense(f, "score_x", 1), -1),
            "score_z": tf.squeeze(g.dense(hz, "score_z", 1), -1),
            "score_xz": tf.squeeze(g.dense(j, "score_xz", 1), -1),
        }


def _signatures(p: ModelPreset, train: bool, use_resource: bool, seed: int) -> dict:
    g = _Graph(seed, train, use_resource)
    sig = v1.saved_model.signature_def_utils.predict_signature_def
    x = v1.placeholder(tf.float32, [None, p.image_size, p.image_size, 3], name="x")
    z = v1.placeholder(tf.float32, [None, p.z_dim], name="z")
    x_d = v1.placeholder(tf.float32, [None, p.gd_size, p.gd_size, 3], name="x_d")
    z_d = v1.placeholder(tf.float32, [None, p.z_dim], name="z_d")
    return {
        "encode": sig({"x": x}, _encoder(g, x, p)),
        "generate": sig({"z": z}, _generator(g, z, p)),
        "discriminate": sig({"x": x_d, "z": z_d}, _discriminator(g, x_d, z_d)),
    }


def build_standin_module(
    path: Path, preset: ModelPreset, *, use_resource: bool, seed: int = 0
) -> Path:
    """Write a TF1 Hub format BigBiGAN stand-in for `preset` to `path`."""
    builder = v1.saved_model.Builder(str(path))
    for tags, train in (([], False), (["train"], True)):
        graph = tf.Graph()
        with graph.as_default():
            signatures = _signatures(preset, train, use_resource, seed)
            with v1.Session(graph=graph) as sess:
                sess.run(v1.global_variables_initializer())
                if not train:  # the variables are saved once, with the first graph
                    builder.add_meta_graph_and_variables(sess, tags, signatures)
                else:
                    builder.add_meta_graph(tags, signatures)
    builder.save()
    # the marker hub.load looks for: a ModuleDef with format = 1 (TF1 Hub format)
    (Path(path) / "tfhub_module.pb").write_bytes(b"\x08\x01")
    return Path(path)

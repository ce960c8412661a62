"""Where and how the model computes: GPUs, memory growth, mixed precision, XLA.

A hospital node may have several GPUs, one, or none; the CPU path is the default
and what the tests run. Everything here is switched by `DeviceConfig` (run config
keys `mixed-precision`, `xla`, `memory-growth`, `multi-gpu`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import keras
import tensorflow as tf

from common.config import DeviceConfig

log = logging.getLogger(__name__)


def setup_devices(config: DeviceConfig) -> list[str]:
    """Apply memory growth before any GPU is touched; return the visible GPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, config.memory_growth)
        except RuntimeError:  # already initialised by an earlier model in-process
            log.debug("memory growth of %s already fixed", gpu.name)
    return [g.name for g in gpus]


@contextlib.contextmanager
def dtype_policy(config: DeviceConfig) -> Iterator[None]:
    """Build models under the configured precision, then restore the global one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def strategy_for(config: DeviceConfig) -> tf.distribute.Strategy:
    """MirroredStrategy over the node's GPUs when asked and available."""
    gpus = setup_devices(config)
    if config.multi_gpu and len(gpus) > 1:
        log.info("mirroring the training step over %d GPUs", len(gpus))
        return tf.distribute.MirroredStrategy()
    if config.multi_gpu:
        log.warning("multi-gpu asked for but %d GPU(s) visible: one device", len(gpus))
    return tf.distribute.get_strategy()


def wrap_optimizer(
    optimizer: keras.optimizers.Optimizer, config: DeviceConfig
) -> keras.optimizers.Optimizer:
    """float16 needs dynamic loss scaling so small gradients do not vanish."""
    if config.mixed_precision == "float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer

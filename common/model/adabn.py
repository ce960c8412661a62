"""AdaBN (Li et al. 2016): a model's BatchNorm statistics re-estimated on data.

For a FedBN run, whose BatchNorm layers never left the training sites: a site
without its own statistics (the held-out site, or a hospital scoring new
patients after the run) estimates them on its own slices.
"""

from __future__ import annotations

import keras
import numpy as np


def adapt_batchnorm(model: keras.Model, images: np.ndarray, batch: int = 64) -> None:
    """Set every BatchNorm layer's moving statistics of `model` to the mean of
    its per-batch statistics over `images`; every other weight is kept."""
    layers = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, len(images), batch), start=1):
            for layer in layers:
                # moving = (1 - 1/k) moving + (1/k) batch: a running mean
                layer.momentum = 1.0 - 1.0 / k
            model(images[start : start + batch], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum

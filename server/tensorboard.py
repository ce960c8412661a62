"""TensorBoard event files in the run directory, the way TensorFlow users follow
a training run (`tensorboard --logdir RUN_DIR`): D/E/G losses per BigBiGAN
round, G's samples, and at the end each split's patient AUC. The ServerApp
writes aggregates and G(z) only (no patient involved); a simulated run adds its
reconstruction grid, drawn on the machine that holds the slices. The images are
the PNGs the run writes anyway."""

from __future__ import annotations

import math
from pathlib import Path

BOARD_DIR = "tensorboard"
_writers: dict[Path, object] = {}


def _writer(out: Path):
    """One event-file writer per run directory and process."""
    import tensorflow as tf

    path = (Path(out) / BOARD_DIR).resolve()
    if path not in _writers:
        _writers[path] = tf.summary.create_file_writer(str(path))
    return _writers[path]


def _png(path: Path):
    """A PNG file as a [1, h, w, c] uint8 tensor."""
    import tensorflow as tf

    return tf.image.decode_png(tf.io.read_file(str(path)))[None]


def log_round(out: Path, entry: dict, samples_png: Path | None = None) -> None:
    """One BigBiGAN round: the sites' mean losses and G's samples."""
    import tensorflow as tf

    step = int(entry["round"])
    with _writer(out).as_default():
        for key in ("d_loss", "e_loss", "g_loss"):
            if key in entry:
                tf.summary.scalar(f"losses/{key}", float(entry[key]), step=step)
        tf.summary.scalar("rounds/sites", int(entry["sites"]), step=step)
        tf.summary.scalar("rounds/clipped", int(entry.get("clipped", 0)), step=step)
        if samples_png is not None and samples_png.is_file():
            tf.summary.image("samples/G(z)", _png(samples_png), step=step)
    _writer(out).flush()


def log_results(out: Path, metrics: dict, step: int) -> None:
    """Each split's patient AUC, sensitivity and specificity at `step` (the
    last BigBiGAN round)."""
    import tensorflow as tf

    with _writer(out).as_default():
        for split, m in metrics.get("splits", {}).items():
            for key in ("auc", "sensitivity", "specificity"):
                value = m.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tf.summary.scalar(f"{split}/{key}", float(value), step=step)
    _writer(out).flush()


def log_image(out: Path, name: str, png: Path, step: int) -> None:
    """A PNG the run wrote (e.g. the reconstructions grid) as an image."""
    import tensorflow as tf

    with _writer(out).as_default():
        tf.summary.image(name, _png(png), step=step)
    _writer(out).flush()

"""Training and inference speed per preset on this machine, as ratios.

Prints, per preset: training images/s, inference slices/s, the training step's
FLOP count (from TensorFlow's graph profiler) and its FLOP/s divided by this
machine's float32 matmul FLOP/s measured in the same process.

    python benchmarks/bench_train.py [--presets tiny small] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from gpu_step import graph_flops  # noqa: E402  (this folder)

from common.config import TrainConfig, get_preset  # noqa: E402
from common.model.gan_training import BigBiGAN  # noqa: E402


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """Sustained float32 matmul FLOP/s: the machine's practical ceiling."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        c = matmul(a, b)
    c.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def bench_inference(name: str, batch: int, steps: int) -> float:
    """E's slices/s (image to z_mean), without training: the paper preset's
    training does not fit beside other work in this machine's memory."""
    preset = get_preset(name)
    model = BigBiGAN(preset, seed=0)
    size = preset.image_size
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch * steps, size, size, 3)).astype("float32")
    model.encode(images[:batch])  # trace
    start = time.perf_counter()
    model.encode(images, batch=batch)
    return len(images) / (time.perf_counter() - start)


def bench_preset(name: str, batch: int, steps: int) -> dict:
    preset = get_preset(name)
    model = BigBiGAN(preset, seed=0)
    rng = np.random.default_rng(0)
    size = preset.image_size
    images = rng.uniform(-1, 1, (batch * steps, size, size, 3)).astype("float32")
    config = TrainConfig(batch_size=batch, local_epochs=1)
    start = time.perf_counter()
    model.train_epochs(images[: batch * 1], config, seed=0)  # trace + one step
    trace = time.perf_counter() - start
    start = time.perf_counter()
    model.train_epochs(images, config, seed=1)
    train_time = time.perf_counter() - start
    flops = graph_flops(model._step.get_concrete_function(tf.constant(images[:batch])))
    model.encode(images[:batch])  # trace inference
    start = time.perf_counter()
    model.encode(images, batch=batch)
    infer_time = time.perf_counter() - start
    return {
        "preset": name,
        "trace_s": trace,
        "train_img_s": batch * steps / train_time,
        "infer_img_s": len(images) / infer_time,
        "step_gflop": flops / 1e9,
        "step_flop_s": flops * steps / train_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--inference-only", nargs="*", default=[], help="presets to time E alone"
    )
    args = parser.parse_args()
    for name in args.presets:
        # the ceiling right before the step it is set against: a shared machine's
        # load moves between presets
        peak = matmul_flops()
        r = bench_preset(name, args.batch, args.steps)
        peak = max(peak, matmul_flops())
        print(
            f"{name:6s} train {r['train_img_s']:7.1f} img/s  "
            f"inference {r['infer_img_s']:7.1f} slices/s  "
            f"step {r['step_gflop']:.2f} GFLOP  "
            f"compute efficiency {r['step_flop_s'] / peak:.2f} of matmul "
            f"({peak / 1e9:.0f} GFLOP/s)  (first trace {r['trace_s']:.0f} s)",
            flush=True,
        )
    for name in args.inference_only:
        rate = bench_inference(name, args.batch, args.steps)
        print(f"{name:6s} inference {rate:7.1f} slices/s (E alone)", flush=True)


if __name__ == "__main__":
    main()

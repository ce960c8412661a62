"""The BigBiGAN training step on a GPU: FLOPs per image, images/s, and the share
of the device's peak it reaches. Ready for a machine with a GPU; on a CPU-only
machine it counts the FLOPs and says what they imply on a given peak.

    python benchmarks/gpu_step.py --preset paper --batch 16 \
        --mixed-precision bfloat16 --xla --steps 50
    python benchmarks/gpu_step.py --preset paper --count-only   # any machine

FLOPs come from TensorFlow's graph profiler over the traced step (one D update
and one E/G update, forward and backward, optimisers included); a multiply-add
counts as 2. `--peak-tflops` is the device's dense peak in the chosen precision
(default: an H100 SXM's 989 bf16/fp16 dense TFLOP/s); `--utilisation` the share
of it a well-fed step might reach (default 0.4) for the estimate.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.config import DeviceConfig, TrainConfig, get_preset  # noqa: E402
from common.model.gan_training import BigBiGAN  # noqa: E402

H100_DENSE_BF16_TFLOPS = 989.0


def graph_flops(concrete) -> float:
    """FLOPs of a traced function, as TensorFlow's profiler counts them."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return float(model_analyzer.profile(concrete.graph, options=opts).total_float_ops)


def traced_step(model: BigBiGAN, batch: int):
    """The training step traced for one batch shape (built, never run)."""
    model._build_step(TrainConfig(batch_size=batch))
    size = model.preset.image_size
    spec = tf.TensorSpec((batch, size, size, 3), tf.float32)
    return model._step.get_concrete_function(spec)


def traced_encode(model: BigBiGAN, batch: int):
    """E's inference (z_mean) traced for one batch shape."""
    size = model.preset.image_size
    encode = tf.function(lambda x: model.encoder(x, training=False))
    return encode.get_concrete_function(
        tf.TensorSpec((batch, size, size, 3), tf.float32)
    )


def time_steps(model: BigBiGAN, batch: int, steps: int) -> float:
    """Seconds per training step, after a warm-up step (tracing, XLA compile)."""
    size = model.preset.image_size
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(-1, 1, (batch, size, size, 3)).astype("float32"))
    model._step(x).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        out = model._step(x)
    out.numpy()  # the last step done means all are (one stream)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--mixed-precision", default="bfloat16", choices=["off", "float16", "bfloat16"]
    )
    parser.add_argument("--xla", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=H100_DENSE_BF16_TFLOPS)
    parser.add_argument("--utilisation", type=float, default=0.4)
    parser.add_argument(
        "--count-only", action="store_true", help="count FLOPs, run nothing"
    )
    args = parser.parse_args()

    devices = DeviceConfig(mixed_precision=args.mixed_precision, xla=args.xla)
    model = BigBiGAN(get_preset(args.preset), seed=0, devices=devices)
    counts = model.parameter_counts()
    print(
        f"preset {args.preset}: parameters "
        + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in counts.items())
    )
    step = traced_step(model, args.batch)
    per_image = graph_flops(step) / args.batch
    encode_per_image = graph_flops(traced_encode(model, args.batch)) / args.batch
    peak = args.peak_tflops * 1e12
    implied = args.utilisation * peak / per_image
    print(f"training: {per_image / 1e9:.1f} GFLOP per image (D step + E/G step)")
    print(f"inference (E, z_mean): {encode_per_image / 1e9:.2f} GFLOP per slice")
    print(
        f"at {args.utilisation:.0%} of {args.peak_tflops:.0f} TFLOP/s: "
        f"{implied:.0f} training images/s, "
        f"{args.utilisation * peak / encode_per_image:.0f} inference slices/s"
    )
    gpus = tf.config.list_physical_devices("GPU")
    if args.count_only:
        return
    if not gpus:
        print("no GPU visible: nothing timed (use --count-only on a CPU)")
        return
    seconds = time_steps(model, args.batch, args.steps)
    achieved = per_image * args.batch / seconds
    print(
        f"{len(gpus)} GPU(s), {args.mixed_precision}, xla={args.xla}: "
        f"{args.batch / seconds:.1f} training images/s, "
        f"{achieved / 1e12:.1f} TFLOP/s = {achieved / peak:.2f} of the peak given"
    )


if __name__ == "__main__":
    main()

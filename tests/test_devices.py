"""The GPU path, checked on the CPU: mixed precision, XLA, and a mirrored step."""

import json
import subprocess
import sys

import numpy as np
import pytest

from common.config import ConfigError, DeviceConfig, RunConfig, TrainConfig, get_preset
from common.model.gan_training import BigBiGAN

IMAGES = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype("float32")


@pytest.mark.parametrize(
    "devices",
    [
        DeviceConfig(mixed_precision="bfloat16", xla=True),
        DeviceConfig(mixed_precision="float16"),
    ],
    ids=["bfloat16+xla", "float16"],
)
def test_mixed_precision_trains_with_float32_variables(devices):
    model = BigBiGAN(get_preset("tiny"), seed=0, devices=devices)
    compute = {"bfloat16": "bfloat16", "float16": "float16"}[devices.mixed_precision]
    conv = model.encoder.get_layer("block1_unit1_conv2")
    assert conv.compute_dtype == compute and conv.variable_dtype == "float32"
    before = model.get_weights()
    losses = model.train_epochs(IMAGES, TrainConfig(batch_size=4), seed=0)
    assert np.isfinite([losses.d, losses.e, losses.g]).all()
    after = model.get_weights()
    assert all(w.dtype == np.float32 for w in after)
    moved = sum(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    assert moved > len(before) // 2
    z = model.encode(IMAGES)
    assert np.isfinite(z).all() and z.shape == (8, 120)


def test_run_config_switches_reach_the_device_config():
    config = RunConfig.from_flat({"mixed-precision": "bfloat16", "xla": True})
    assert config.devices == DeviceConfig("bfloat16", True, True, False)
    with pytest.raises(ConfigError, match="mixed-precision"):
        RunConfig.from_flat({"mixed-precision": "fp8"})


MIRRORED = """
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from common.config import TrainConfig, get_preset
from common.model.gan_training import BigBiGAN
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
model = BigBiGAN(get_preset("tiny"), seed=0, strategy=strategy)
before = model.get_weights()
x = np.random.default_rng(0).uniform(-1, 1, (8, 64, 64, 3)).astype("float32")
losses = model.train_epochs(x, TrainConfig(batch_size=4), seed=0)
var = model.encoder.get_layer("z_mean").kernel
replicas = [v.numpy() for v in var.value.values] if hasattr(var.value, "values") else []
print(json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "steps": losses.steps,
    "finite": bool(np.isfinite([losses.d, losses.e, losses.g]).all()),
    "moved": sum(not np.array_equal(a, b)
                 for a, b in zip(model.get_weights(), before)),
    "copies_equal": all(np.array_equal(r, replicas[0]) for r in replicas),
    "n_copies": len(replicas),
}))
"""


def test_mirrored_strategy_runs_the_step_on_two_replicas():
    """Two logical CPUs stand in for two GPUs (a fresh process: devices are fixed
    at TensorFlow start-up)."""
    run = subprocess.run(
        [sys.executable, "-c", MIRRORED],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["steps"] == 2
    assert result["finite"] and result["moved"] > 0
    assert result["n_copies"] == 2 and result["copies_equal"]

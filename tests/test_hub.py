"""The TF Hub warm start, offline, against stand-in modules the tests build."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hub_standin import build_standin_module

from common.commands import main
from common.config import get_preset
from common.model.bigbigan import build_encoder
from common.model.hub import (
    HubEncoder,
    HubNotFineTunableError,
    HubUnavailableError,
    WarmStartError,
    load_module,
    read_checkpoint,
    warm_start_encoder,
)

# tiny, at 32 px, with two units in the first stages so identity shortcuts with a
# stride (slim's 1x1 max-pool subsampling) and the MLP's skip connection both occur
PRESET = dataclasses.replace(
    get_preset("tiny"), name="hub-test", image_size=32, gd_size=16, enc_units=(2, 2, 1)
)
N = 3


@pytest.fixture(scope="session")
def modules(tmp_path_factory) -> dict[str, Path]:
    """One stand-in with resource variables, one with ref variables (same values)."""
    root = tmp_path_factory.mktemp("hub")
    return {
        kind: build_standin_module(root / kind, PRESET, use_resource=kind == "resource")
        for kind in ("resource", "ref")
    }


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(1)
    shape = (N, PRESET.image_size, PRESET.image_size, 3)
    return rng.uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("tags", [(), ("train",)])
def test_module_loads_offline_and_signatures_have_the_real_keys(modules, images, tags):
    module = load_module(modules["resource"], tags)
    assert set(module.signatures) >= {"encode", "generate", "discriminate"}
    out = module.signatures["encode"](x=tf.constant(images))
    assert set(out) == {
        "z_mean", "z_stdev", "z_sample", "avepool_feat", "bn_crelu_feat", "default"
    }  # fmt: skip
    width = 4 * PRESET.enc_depths[-1]
    assert out["z_mean"].shape == out["z_sample"].shape == (N, PRESET.z_dim)
    assert out["avepool_feat"].shape == (N, width)
    assert out["bn_crelu_feat"].shape == (N, 2 * width)
    assert np.all(out["z_stdev"].numpy() > 0)
    z = tf.random.normal((N, PRESET.z_dim))
    gen = module.signatures["generate"](z=z)
    assert gen["default"].shape == (N, PRESET.gd_size, PRESET.gd_size, 3)
    assert gen["upsampled"].shape == (N, 2 * PRESET.gd_size, 2 * PRESET.gd_size, 3)
    scores = module.signatures["discriminate"](x=gen["default"], z=z)
    assert {k: v.shape for k, v in scores.items()} == {
        k: (N,) for k in ("score_xz", "score_x", "score_z")
    }


def test_resource_and_ref_variables_are_detected_and_explained(modules, images):
    resource = HubEncoder(modules["resource"])
    assert resource.variable_kind == "resource" and resource.fine_tunable
    assert resource.trainable_variables == []  # frozen by default
    assert resource.image_size == PRESET.image_size
    ref = HubEncoder(modules["ref"])
    assert ref.variable_kind == "ref" and not ref.fine_tunable
    assert "warm_start_encoder" in ref.explanation
    assert ref(images)["z_mean"].shape == (N, PRESET.z_dim)  # frozen use still works
    with pytest.raises(HubNotFineTunableError, match="ref variables"):
        HubEncoder(modules["ref"], frozen=False)


def test_fine_tuning_through_encode_reaches_every_encoder_variable(modules, images):
    encoder = HubEncoder(modules["resource"], tags={"train"}, frozen=False)
    variables = encoder.trainable_variables
    names = {v.name.split(":")[0] for v in variables}
    ckpt = read_checkpoint(modules["resource"])
    expected = {n for n in ckpt if n.startswith("encoder/") and "moving_" not in n}
    assert names == expected
    x = tf.constant(images)

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(encoder(x)["z_mean"])
        return tape.gradient(loss, variables)

    for fn in (grads, tf.function(grads)):
        missing = [v.name for v, g in zip(variables, fn(), strict=True) if g is None]
        assert not missing
    frozen = HubEncoder(modules["resource"])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(frozen(x)["z_mean"])
    assert all(g is None for g in tape.gradient(loss, frozen.module.variables))


@pytest.fixture(scope="module")
def warm_encoder(modules):
    """Our encoder warm-started from the ref-variable stand-in's checkpoint."""
    encoder = build_encoder(PRESET)
    report = warm_start_encoder(encoder, modules["ref"])
    return encoder, report


def test_warm_start_maps_every_variable(warm_encoder, modules):
    encoder, report = warm_encoder
    assert report.unmapped_ours == [] and report.unused_module == []
    assert len(report.mapped) == len(encoder.weights)
    ckpt = read_checkpoint(modules["ref"])
    for layer, weight in (("block2_unit2_conv2", 0), ("block1_unit1_preact", 3)):
        ours = encoder.get_layer(layer).weights[weight]
        theirs = report.mapped[f"{layer}/{ours.name}"]
        np.testing.assert_array_equal(ours.numpy(), ckpt[theirs])


@pytest.mark.parametrize("tags", [(), ("train",)])
def test_warm_started_encoder_computes_what_the_module_encodes(
    warm_encoder, modules, images, tags
):
    """Inference (moving statistics) and train graph (batch statistics) both agree."""
    encoder, _ = warm_encoder
    theirs = HubEncoder(modules["ref"], tags=tags)(images)
    snapshot = [v.numpy() for v in encoder.non_trainable_weights]
    ours = encoder(images, training=bool(tags))
    for v, value in zip(encoder.non_trainable_weights, snapshot, strict=True):
        v.assign(value)  # training=True moved the BatchNorm statistics; undo that
    for key in ("avepool_feat", "bn_crelu_feat", "z_mean", "z_stdev"):
        expected = theirs[key].numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(
            np.asarray(ours[key]), expected, rtol=1e-4, atol=1e-4 * scale, err_msg=key
        )


def test_warm_start_refuses_missing_trunk_names_and_wrong_shapes(warm_encoder, modules):
    encoder, _ = warm_encoder
    ckpt = read_checkpoint(modules["ref"])
    gone = (
        "encoder/resnet_v2_50/block2/unit_1/bottleneck_v2/conv2/BatchNorm/moving_mean"
    )
    partial = {k: v for k, v in ckpt.items() if k != gone}
    with pytest.raises(WarmStartError, match="block2_unit1_conv2_bn/moving_mean"):
        warm_start_encoder(encoder, partial)
    report = warm_start_encoder(encoder, partial, allow_partial=True)
    assert report.unmapped_trunk == ["block2_unit1_conv2_bn/moving_mean"]
    # only a guessed head name missing: allowed, reported
    head = {k: v for k, v in ckpt.items() if not k.startswith("encoder/z_stdev/")}
    assert len(warm_start_encoder(encoder, head).unmapped_ours) == 2
    bad = dict(ckpt)
    bad["encoder/resnet_v2_50/conv1/weights"] = np.zeros((7, 7, 3, 8), np.float32)
    with pytest.raises(WarmStartError, match="stem_conv/kernel"):
        warm_start_encoder(encoder, bad)
    # an extra scope in front of every name (e.g. "module/") is found by itself
    prefixed = {f"module/{k}": v for k, v in ckpt.items()}
    assert warm_start_encoder(encoder, prefixed).unmapped_ours == []


def test_unreachable_handle_fails_fast_with_local_copy_instructions(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as err:
        HubEncoder("https://tfhub.invalid/deepmind/bigbigan-resnet50/1")
    assert time.monotonic() - start < 10
    assert "hub-module" in str(err.value) and "tf-hub-format=compressed" in str(
        err.value
    )
    with pytest.raises(HubUnavailableError, match="no such module directory"):
        read_checkpoint(tmp_path / "not-there")
    incomplete = tmp_path / "copy"
    (incomplete / "variables").mkdir(parents=True)
    (incomplete / "saved_model.pb").write_bytes(b"")
    with pytest.raises(HubUnavailableError, match="variables.index"):
        load_module(incomplete)


def test_hub_inspect_lists_parts_kind_signatures_and_mapping(modules, capsys):
    assert main(["hub-inspect", str(modules["resource"]), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    for text in ("[encoder]", "[generator]", "[discriminator]", "resource variables"):
        assert text in out
    assert "signature encode: inputs {'x': [None, 32, 32, 3]}" in out
    # the tiny preset has fewer units than this module: the listing says so
    assert "0 of ours unmapped" in out
    assert "unused (module): encoder/resnet_v2_50/block1/unit_2/" in out
    assert main(["hub-inspect", "https://tfhub.invalid/x/1"]) == 2


def test_importing_common_hub_loads_neither_tensorflow_nor_hub():
    code = (
        "import sys, common.model.hub; "
        "assert not {'tensorflow', 'tensorflow_hub'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_config_hub_module_warm_starts_the_initial_model(
    modules, images, monkeypatch
):
    """`hub-module` in the run config reaches the model every site starts from."""
    from common import config as config_module
    from common.model.checkpoint import initial_model

    # the stand-in's preset, with G and D sized for its 16 px output
    preset = dataclasses.replace(PRESET, gen_mults=(4, 2, 1), disc_mults=(1, 2, 2))
    monkeypatch.setitem(config_module.PRESETS, PRESET.name, preset)
    base = config_module.RunConfig(preset=PRESET.name)
    cold = initial_model(base).encode(images)
    warm = initial_model(
        dataclasses.replace(base, hub_module=str(modules["ref"]))
    ).encode(images)
    expected = HubEncoder(modules["ref"])(images)["z_mean"].numpy()
    np.testing.assert_allclose(warm, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(cold, expected, atol=1e-2)

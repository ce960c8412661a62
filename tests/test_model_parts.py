"""Federated parts of the model, and the parts a site keeps between rounds."""

import numpy as np
import pytest

from client.local_parts import KEEP, LocalParts
from common.config import FEDERATED_PARTS, RunConfig
from common.model.gan_training import BigBiGAN
from common.model.model_parts import (
    federated_indices,
    is_batchnorm,
    local_indices,
    merge,
    part_ranges,
    select,
)


@pytest.fixture(scope="module")
def model():
    return BigBiGAN(RunConfig().model, seed=0)


def test_parts_cover_every_array_once_and_match_each_network(model):
    ranges = part_ranges(model)
    weights = model.get_weights()
    assert sorted(i for r in ranges.values() for i in r) == list(range(len(weights)))
    sizes = {part: sum(weights[i].size for i in r) for part, r in ranges.items()}
    counts = model.parameter_counts()
    # count_params() leaves out non-trainable state (BN statistics, SN vectors)
    for part, name in (("e", "E"), ("g", "G"), ("d", "D")):
        assert sizes[part] >= counts[name] > 0
    for parts in FEDERATED_PARTS:
        shared, kept = federated_indices(model, parts), local_indices(model, parts)
        assert sorted(shared + kept) == list(range(len(weights)))
    assert federated_indices(model, "e") == list(ranges["e"])
    assert local_indices(model, "eg") == list(ranges["d"])


def test_merge_puts_values_back_where_select_took_them(model):
    weights = model.get_weights()
    shared = federated_indices(model, "e")
    bumped = [w + 1 for w in select(weights, shared)]
    merged = merge(weights, shared, bumped)
    for i, (a, b) in enumerate(zip(weights, merged, strict=True)):
        assert np.array_equal(b, a + 1) if i in shared else b is a
    with pytest.raises(ValueError, match="expected"):
        merge(weights, shared, bumped[:-1])


def test_kept_parts_round_trip_per_run_and_round(tmp_path):
    store = LocalParts(tmp_path, "ab12")
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4)]
    for rnd in range(1, 5):
        store.save(rnd, [a * rnd for a in arrays])
    assert store.load(4)[0][1, 2] == 20 and store.load(3) is not None
    assert store.load(1) is None  # only the newest KEEP rounds stay
    assert len(list(tmp_path.glob("*.npz"))) == KEEP
    assert LocalParts(tmp_path, "cd34").load(4) is None  # another run's token
    with pytest.raises(ValueError, match="hexadecimal"):
        LocalParts(tmp_path, "../x")


def test_fedbn_keeps_every_batchnorm_array_home_and_shares_the_rest(model):
    paths = [v.path for v in model.variables]
    for parts in FEDERATED_PARTS:
        plain = federated_indices(model, parts)
        fedbn = federated_indices(model, parts, "fedbn")
        dropped = [paths[i] for i in sorted(set(plain) - set(fedbn))]
        assert dropped and all(
            p.rsplit("/", 1)[-1] in ("gamma", "beta", "moving_mean", "moving_variance")
            for p in dropped
        )
        assert not any(is_batchnorm(paths[i]) for i in fedbn)
        kept = local_indices(model, parts, "fedbn")
        assert sorted(fedbn + kept) == list(range(len(paths)))
    # G's conditional BatchNorm: statistics home, gain/offset projections shared
    shared = {paths[i] for i in federated_indices(model, "egd", "fedbn")}
    assert any("cbn" in p and "/gain/" in p for p in shared)
    assert not any("cbn" in p and "moving_" in p for p in shared)


def test_adabn_reestimates_only_the_encoders_statistics():
    local = BigBiGAN(RunConfig().model, seed=0)
    before = local.get_weights()
    bn_layers = [
        layer
        for layer in local.encoder._flatten_layers()
        if hasattr(layer, "moving_mean")
    ]
    momenta = [layer.momentum for layer in bn_layers]
    paths = [v.path for v in local.variables]
    n_e = len(local.encoder.weights)
    images = np.random.default_rng(0).uniform(-1, 1, (40, 64, 64, 3)).astype("float32")
    local.adapt_batchnorm(images, batch=16)
    after = local.get_weights()
    changed = {
        paths[i] for i in range(len(paths)) if not np.array_equal(before[i], after[i])
    }
    assert changed and all("moving_" in p for p in changed)
    assert all(paths.index(p) < n_e for p in changed)  # E's only
    # the statistics are the data's: E's first BatchNorm sees the stem's output,
    # whose per-channel variance is far from the initial 1 on random images
    first_var = next(i for i, p in enumerate(paths) if p.endswith("moving_variance"))
    assert not np.allclose(after[first_var], 1.0, atol=1e-3)
    assert [layer.momentum for layer in bn_layers] == momenta  # restored

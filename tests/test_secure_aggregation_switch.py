"""The run config's `secure-aggregation` switch in the real app, in Flower's
Simulation Engine: our protocol ("fedbigbigan") runs the whole chain and ends
where SecAgg+ does, within the two protocols' quantisation errors."""

import dataclasses
import shutil
import time

import numpy as np
import pytest

from common.config import RunConfig, TrainConfig
from common.secure_agg.quantize import FixedPoint
from server.server_app import MOMENTS_CLIP, quantisation_step
from simulations.simulate import simulate

# one BigBiGAN round, the lm head (2 secure rounds) and the evaluation round:
# each round is a function of the weights, the data and the seed, so after one
# round the two protocols' weights differ by their rounding only
CONFIG = RunConfig(gan_rounds=1, logit_rounds=0, train=TrainConfig(local_epochs=1))
SCALE, SLICES = 0.3, 2
N_SITES = 2  # training sites of the paper's scenario


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory, phantom_study):
    """The same run under SecAgg+ and under ours, on the same phantom sites."""
    runs = {}
    for protocol in ("secaggplus", "fedbigbigan"):
        out = tmp_path_factory.mktemp(protocol)
        shutil.copytree(phantom_study(SCALE, SLICES), out / "data")
        config = dataclasses.replace(CONFIG, secure_aggregation=protocol)
        started = time.monotonic()
        metrics = simulate(out, config, scale=SCALE, slices_per_patient=SLICES)
        runs[protocol] = (out, metrics, time.monotonic() - started)
    return runs


@pytest.mark.simulation
@pytest.mark.slow
@pytest.mark.extended
def test_our_secure_aggregation_runs_the_app_and_ends_where_secagg_plus_does(
    both_runs,
):
    stock_dir, stock, _ = both_runs["secaggplus"]
    ours_dir, metrics, _ = both_runs["fedbigbigan"]
    assert metrics["secure_aggregation"] == "fedbigbigan"
    assert stock["secure_aggregation"] == "secaggplus"
    # 1 BigBiGAN, 2 lm head (moments, statistics), 1 evaluation
    assert metrics["secagg_rounds"] == 4
    assert metrics["secure_eval_sites"] == 2
    assert metrics["plain_eval_roles"] == ["external"]
    assert metrics["train_message_roles"] == ["train"]
    assert metrics["weights_changed"] > 0
    for split in ("train", "val", "test", "external"):
        assert np.isfinite(metrics["splits"][split]["auc"]), split
        # the evaluation counts are exact sums under either protocol
        for key in ("n_patients", "n_slices"):
            assert metrics["splits"][split][key] == stock["splits"][split][key]
    assert [r["phase"] for r in metrics["timing"]["rounds"]] == [
        "gan",
        "moments",
        "head",
        "eval",
    ]
    # ours: the keys sent on each unmask reply set up the next round, across
    # phases (three round trips after the first); SecAgg+: four each round
    assert [r["stages"] for r in metrics["timing"]["rounds"]] == [4, 3, 3, 3]
    assert [r["stages"] for r in stock["timing"]["rounds"]] == [4, 4, 4, 4]
    # uploads: uint32 (the float32 size) against SecAgg+'s int64, weight included
    values = metrics["payload"]["federated_values"]
    assert values == stock["payload"]["federated_values"] > 0
    assert metrics["payload"]["up_bytes"] == 4 * (values + 1)
    assert stock["payload"]["up_bytes"] == 8 * (values + 1)
    assert metrics["payload"]["down_bytes"] == stock["payload"]["down_bytes"]

    # the federated weights after the round: each protocol's mean is within
    # n sites x its error per site of the exact weighted mean (weights <= 1, the
    # largest site's is 1). Flower quantises a float32 update in float32:
    # (x + clip) * 2**28 / (2 clip) keeps 24 significant bits, so its error per
    # site is up to two half-ulps of 2 clip (2.4e-7 at clip 4), not its step
    clip = CONFIG.secagg.delta_clip
    stock_site = quantisation_step(CONFIG, clip, N_SITES) + clip * 2**-22
    ours = dataclasses.replace(CONFIG, secure_aggregation="fedbigbigan")
    ours_site = quantisation_step(ours, clip, N_SITES)
    assert ours_site == FixedPoint(clip, N_SITES).step
    assert ours_site < quantisation_step(CONFIG, clip, N_SITES)  # 2**-29 vs 2**-27
    atol = N_SITES * (stock_site + ours_site)
    with (
        np.load(ours_dir / "global_weights.npz") as got,
        np.load(stock_dir / "global_weights.npz") as want,
    ):
        assert got.files == want.files
        weights = [k for k in want.files if k.startswith("arr_")]
        assert weights
        for key in weights:
            np.testing.assert_allclose(
                got[key], want[key], rtol=2.5e-7, atol=atol, err_msg=key
            )
        # the pooled feature means (the "moments" round, float64 values clipped
        # at MOMENTS_CLIP) agree within both protocols' steps there; the head
        # itself is not compared: with fewer training slices than features it
        # is ill-conditioned, and the variance floor follows each protocol's
        # step (server_app._federated_lm)
        moments_atol = N_SITES * (
            quantisation_step(CONFIG, MOMENTS_CLIP, N_SITES)
            + quantisation_step(ours, MOMENTS_CLIP, N_SITES)
        )
        np.testing.assert_allclose(
            got["head_mean"], want["head_mean"], rtol=0, atol=moments_atol
        )


def test_payload_and_precision_follow_the_chosen_protocol():
    from server.privacy_summary import payload_bytes

    arrays = [np.zeros((10, 3), np.float32), np.zeros(5, np.float32)]
    stock, ours = payload_bytes(arrays), payload_bytes(arrays, "fedbigbigan")
    assert stock["protocol"] == "secaggplus" and ours["protocol"] == "fedbigbigan"
    assert stock["down_bytes"] == ours["down_bytes"] == 4 * 35
    assert (stock["up_bytes"], stock["up_dtype"]) == (8 * 36, "int64")
    assert (ours["up_bytes"], ours["up_dtype"]) == (4 * 36, "uint32")
    ours_config = dataclasses.replace(CONFIG, secure_aggregation="fedbigbigan")
    # the evaluation counts: a power-of-two step of at most 1 sums them exactly
    assert quantisation_step(CONFIG, 2.0**20, 2) == 2.0**-7
    for n, step in ((2, 2.0**-9), (3, 2.0**-9), (15, 2.0**-7), (2047, 1.0)):
        assert quantisation_step(ours_config, 2.0**20, n) == step, n


def test_the_client_app_refuses_a_train_message_outside_both_protocols():
    from flwr.app.message_type import MessageType
    from test_audit_mod import context, fit_content, message

    from client.audit_mod import AuditRefusal
    from client.client_app import app

    with pytest.raises(AuditRefusal, match="SecureAggRefusal"):
        app(message(fit_content("gan"), MessageType.TRAIN), context())

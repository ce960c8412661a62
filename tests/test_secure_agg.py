"""Our secure aggregation (common.secure_agg, client.secure_agg_mod,
server.secure_agg_workflow): fixed point, masks, secret sharing, the protocol
over an in-process grid (dropouts, what leaves a node, bytes), and the same
aggregate as Flower's SecAgg+ in the Simulation Engine."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from client.secure_agg_mod import secure_agg_mod
from common.secure_agg import keys, masking
from common.secure_agg import protocol as p
from common.secure_agg.prg import BLOCK, apply_mask, expand
from common.secure_agg.quantize import FixedPoint, headroom_bits
from server.secure_agg_workflow import SecureAggregationError, SecureAggregator
from simulations.loopback import LoopbackGrid

SIZES = (30, 70, 50, 20, 40)  # num_examples per site
CLIP = 4.0


def site_update(partition: int) -> list[np.ndarray]:
    rng = np.random.default_rng(partition)
    return [
        rng.normal(0, 0.5, (40, 3)).astype(np.float32),
        rng.uniform(-CLIP, CLIP, 7).astype(np.float32),
        np.float32(rng.normal(0, 1, (2, 2, 2))),
    ]


def weighted_mean(partitions) -> list[np.ndarray]:
    total = sum(SIZES[i] for i in partitions)
    return [
        sum(SIZES[i] * site_update(i)[k].astype(np.float64) for i in partitions) / total
        for k in range(3)
    ]


class _Site(NumPyClient):
    def __init__(self, partition: int):
        self.partition = partition

    def fit(self, parameters, config):
        return site_update(self.partition), SIZES[self.partition], {"loss": 0.5}


def _client_app(*mods) -> ClientApp:
    return ClientApp(
        client_fn=lambda c: _Site(int(c.node_config["partition-id"])).to_client(),
        mods=list(mods) or [secure_agg_mod],
    )


def _fit_contents(grid) -> dict[int, RecordDict]:
    ins = FitIns(ndarrays_to_parameters([np.zeros(3, np.float32)]), {})
    return {n: compat.fitins_to_recorddict(ins, True) for n in grid.get_node_ids()}


def _aggregator(**kw) -> SecureAggregator:
    return SecureAggregator(
        kw.pop("num_shares", 1.0),
        kw.pop("threshold", 0.6),
        max_weight=max(SIZES),
        clipping_range=CLIP,
        **kw,
    )


def _tolerance(n_clients: int) -> float:
    """Stochastic rounding moves each client's value by < 1 step; the mean
    divides the weighted sum by the total weight (>= n * min / max)."""
    step = FixedPoint(CLIP, n_clients).step
    return n_clients * step / (sum(SIZES[:n_clients]) / max(SIZES)) + 1e-6


def _stage(message: Message) -> str:
    return message.content.config_records[p.RECORD][p.STAGE]


# --- fixed point --------------------------------------------------------------


def test_fixed_point_round_trip_within_one_step():
    fixed = FixedPoint(CLIP, 10)
    values = np.random.default_rng(0).uniform(-CLIP, CLIP, 100_000)
    out = np.empty(values.size, np.uint32)
    assert fixed.encode_into(values, out, np.random.default_rng(1)) == 0
    error = np.abs(fixed.decode(out) - values)
    assert error.max() < fixed.step
    assert fixed.step < 2 * CLIP / 2**26  # 10 clients leave 27 bits per client


def test_fixed_point_counts_clipped_values_and_sums_without_overflow():
    n = 10
    fixed = FixedPoint(CLIP, n)
    extreme = np.array([1e6, -1e6, CLIP, -CLIP, 5.0], np.float32)
    total = np.zeros(extreme.size, np.uint32)
    for client in range(n):
        out = np.empty(extreme.size, np.uint32)
        assert fixed.encode_into(extreme, out, np.random.default_rng(client)) == 3
        total += out  # wraps mod 2**32
    expected = n * np.array([CLIP, -CLIP, CLIP, -CLIP, CLIP])
    np.testing.assert_allclose(fixed.decode(total), expected, atol=n * fixed.step)
    assert 2 ** headroom_bits(n) > n


def test_stochastic_rounding_is_unbiased():
    fixed = FixedPoint(1.0, 3)
    values = np.full(200_000, 0.3 * fixed.step)  # 0.3 of a step
    out = np.empty(values.size, np.uint32)
    fixed.encode_into(values, out, np.random.default_rng(2))
    assert abs(fixed.decode(out).mean() / fixed.step - 0.3) < 0.01


# --- PRG, masks, shares -------------------------------------------------------


def test_prg_is_deterministic_seekable_and_seed_dependent():
    seed, other = b"\x01" * 32, b"\x02" * 32
    length = BLOCK + 1001  # crosses a keystream block
    full = expand(seed, 0, length)
    np.testing.assert_array_equal(full, expand(seed, 0, length))
    for start in (0, 1, 3, 5, BLOCK - 2):
        np.testing.assert_array_equal(
            expand(seed, start, 1000), full[start : start + 1000]
        )
    assert (full != expand(other, 0, length)).mean() > 0.99
    # uniform over uint32: the top bit is set about half the time
    assert abs((full >> 31).mean() - 0.5) < 0.01


def test_pairwise_and_self_masks_cancel_exactly():
    ids = [3, 7, 11, 20]
    rid = "r"
    priv = {i: keys.new_private_key() for i in ids}
    pub = {i: keys.public_key(k) for i, k in priv.items()}
    plain = {
        i: np.random.default_rng(i).integers(0, 2**32, 5000, np.uint32) for i in ids
    }
    selfs = {i: keys.new_seed() for i in ids}
    total = np.zeros(5000, np.uint32)
    for i in ids:
        vector = plain[i].copy()
        seeds = {
            j: keys.pairwise_seed(priv[i], pub[j], rid, i, j) for j in ids if j != i
        }
        masking.mask(vector, i, selfs[i], seeds)
        assert (vector == plain[i]).mean() < 0.01
        total += vector
    assert not np.array_equal(total, sum(plain.values()))
    masking.remove_self_masks(total, selfs.values())
    np.testing.assert_array_equal(total, sum(plain.values()))


def test_dropped_clients_pairwise_masks_are_removed():
    ids, rid, dropped = [1, 2, 3], "r", 2
    priv = {i: keys.new_private_key() for i in ids}
    pub = {i: keys.public_key(k) for i, k in priv.items()}
    total = np.zeros(100, np.uint32)
    for i in (1, 3):  # 2 never uploads
        vector = np.full(100, i, np.uint32)
        seeds = {
            j: keys.pairwise_seed(priv[i], pub[j], rid, i, j) for j in ids if j != i
        }
        masking.mask(vector, i, bytes([i]) * 32, seeds)
        total += vector
    masking.remove_self_masks(total, [b"\x01" * 32, b"\x03" * 32])
    # the server rebuilds 2's mask key and derives its seeds with 1 and 3
    seeds = {
        j: keys.pairwise_seed(priv[dropped], pub[j], rid, dropped, j) for j in (1, 3)
    }
    masking.remove_dropped_pairs(total, dropped, seeds)
    np.testing.assert_array_equal(total, np.full(100, 4, np.uint32))


def test_masking_refuses_without_a_pairwise_mask():
    with pytest.raises(ValueError, match="pairwise"):
        masking.mask(np.zeros(4, np.uint32), 1, b"\x00" * 32, {})


def test_shamir_any_threshold_subset_rebuilds_the_secret():
    secret = keys.new_private_key()
    shares = keys.split_secret(secret, 3, 5)
    for subset in ([0, 1, 2], [4, 2, 0], [1, 3, 4, 0]):
        assert keys.join_shares([shares[i] for i in subset]) == secret
    assert keys.join_shares(shares[:2]) != secret


def test_share_encryption_is_bound_to_sender_receiver_and_round():
    a, b = keys.new_private_key(), keys.new_private_key()
    blob = keys.encrypt_shares(a, keys.public_key(b), "r1", 1, 2, b"share")
    assert keys.decrypt_shares(b, keys.public_key(a), "r1", 1, 2, blob) == b"share"
    for rid, src, dst in (("r2", 1, 2), ("r1", 3, 2)):
        with pytest.raises(InvalidTag):
            keys.decrypt_shares(b, keys.public_key(a), rid, src, dst, blob)


def test_prg_apply_mask_subtract_undoes_add():
    vector = np.arange(10_000, dtype=np.uint32)
    apply_mask(vector, b"\x05" * 32, start=17)
    apply_mask(vector, b"\x05" * 32, start=17, subtract=True)
    np.testing.assert_array_equal(vector, np.arange(10_000, dtype=np.uint32))


# --- the protocol over an in-process grid -------------------------------------


def test_secure_mean_equals_plain_weighted_mean():
    grid = LoopbackGrid(_client_app(), len(SIZES))
    result = _aggregator().run(grid, _fit_contents(grid), "1")
    got = result.ndarrays("fitres.parameters")
    for g, e in zip(got, weighted_mean(range(5)), strict=True):
        assert g.dtype == np.float32 and g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=_tolerance(5))
    assert result.dropped == set()
    assert {
        dict(r.config_records["fitres.metrics"])["loss"]
        for r in result.replies.values()
    } == {0.5}
    assert grid.traffic.exchanges == 4


@pytest.mark.parametrize("lost_at", [p.COLLECT, p.UNMASK])
def test_one_of_five_dropped_after_sharing_keys(lost_at):
    """Lost before uploading: its pairwise masks are rebuilt from its
    neighbours' shares; lost after uploading: its self mask is."""
    grid = LoopbackGrid(_client_app(), len(SIZES))
    lost = 1002
    grid.drop[lost] = lambda m: p.STAGES.index(_stage(m)) >= p.STAGES.index(lost_at)
    result = _aggregator(num_shares=5, threshold=3).run(grid, _fit_contents(grid), "1")
    uploaded = [0, 1, 3, 4] if lost_at == p.COLLECT else [0, 1, 2, 3, 4]
    for g, e in zip(result.ndarrays(), weighted_mean(uploaded), strict=True):
        np.testing.assert_allclose(g, e, atol=_tolerance(5))
    assert result.dropped == ({lost} if lost_at == p.COLLECT else set())
    assert any(str(lost) in f for f in result.failures)


def test_too_many_dropped_stops_the_round():
    grid = LoopbackGrid(_client_app(), len(SIZES))
    for node in (1001, 1002, 1003):
        grid.drop[node] = lambda m: _stage(m) == p.COLLECT
    with pytest.raises(SecureAggregationError, match="threshold"):
        _aggregator(num_shares=5, threshold=3).run(grid, _fit_contents(grid), "1")


def test_sparse_neighbour_graph_with_a_dropout():
    """7 nodes, 3 shares each (a ring): masks only between neighbours."""
    sizes = SIZES + (60, 10)
    grid = LoopbackGrid(_client_app(), 7)
    grid.drop[1004] = lambda m: _stage(m) == p.COLLECT

    class Site(_Site):
        def fit(self, parameters, config):
            return site_update(self.partition), sizes[self.partition], {}

    grid.client_app = _client_app_for(Site)
    aggregator = SecureAggregator(3, 2, max_weight=max(sizes), clipping_range=CLIP)
    result = aggregator.run(grid, _fit_contents(grid), "1")
    keep = [0, 1, 2, 3, 5, 6]
    total = sum(sizes[i] for i in keep)
    for k, g in enumerate(result.ndarrays()):
        expected = sum(sizes[i] * site_update(i)[k].astype(np.float64) for i in keep)
        np.testing.assert_allclose(g, expected / total, atol=1e-5)


def _client_app_for(site_class) -> ClientApp:
    return ClientApp(
        client_fn=lambda c: site_class(int(c.node_config["partition-id"])).to_client(),
        mods=[secure_agg_mod],
    )


def test_chunked_upload_reassembles():
    grid = LoopbackGrid(_client_app(), 3)
    seen = []

    def spy(msg, ctxt, call_next):
        reply = secure_agg_mod(msg, ctxt, call_next)
        if p.MASKED in reply.content.array_records:
            seen.append(
                [len(a.data) for a in reply.content.array_records[p.MASKED].values()]
            )
        return reply

    grid.client_app = _client_app(spy)
    result = _aggregator(chunk_elements=50).run(grid, _fit_contents(grid), "1")
    length = 1 + 120 + 7 + 8
    assert [len(s) for s in seen] == [-(-length // 50)] * 3
    assert max(max(s) for s in seen) <= 50 * 4 + 128  # npy header
    for g, e in zip(result.ndarrays(), weighted_mean(range(3)), strict=True):
        np.testing.assert_allclose(g, e, atol=_tolerance(3))


def test_no_reply_carries_the_plain_update():
    """Every message a node sends: no float array, no unmasked vector. The
    masked vector read back as fixed point is nowhere near the update."""
    replies = []

    def spy(msg, ctxt, call_next):
        stage = _stage(msg)  # the mod takes its record out before the app runs
        reply = secure_agg_mod(msg, ctxt, call_next)
        replies.append((ctxt.node_config["partition-id"], stage, reply))
        return reply

    grid = LoopbackGrid(_client_app(spy), 4)
    _aggregator().run(grid, _fit_contents(grid), "1")
    assert len(replies) == 4 * 4
    fixed = FixedPoint(CLIP, 4)
    for partition, stage, reply in replies:
        plain = np.concatenate([a.ravel() for a in site_update(partition)])
        for name, record in reply.content.array_records.items():
            if name != p.MASKED:
                assert len(record) == 0, (stage, name)
                continue
            assert stage == p.COLLECT
            vector = np.concatenate([a.numpy() for a in record.values()])
            assert vector.dtype == np.uint32
            values = fixed.decode(vector[1:])
            # an unmasked upload would match within one step everywhere
            assert np.mean(np.abs(values - plain) < 0.01) < 0.01
            assert plain.tobytes() not in vector.tobytes()
        for record in reply.content.config_records.values():
            for value in record.values():
                blobs = value if isinstance(value, list) else [value]
                for blob in blobs:
                    if isinstance(blob, bytes):
                        assert plain.tobytes()[:64] not in blob


def test_a_plain_train_message_is_refused():
    grid = LoopbackGrid(_client_app(), 2)
    ins = FitIns(ndarrays_to_parameters([np.zeros(3, np.float32)]), {})
    message = Message(
        content=compat.fitins_to_recorddict(ins, True),
        dst_node_id=1000,
        message_type=MessageType.TRAIN,
        group_id="1",
    )
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and not reply.has_content()
    assert "outside secure aggregation" in reply.error.reason


def test_stages_out_of_order_are_refused():
    grid = LoopbackGrid(_client_app(), 2)
    content = RecordDict(
        {
            p.RECORD: ConfigRecord(
                {p.STAGE: p.UNMASK, p.ROUND_ID: "x", p.ACTIVE: [1000], p.DEAD: []}
            )
        }
    )
    message = Message(
        content=content, dst_node_id=1000, message_type=MessageType.TRAIN, group_id="1"
    )
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and "did not set up" in reply.error.reason


def test_upload_is_at_most_float32_size():
    """A node's upload is one uint32 per value plus one for its weight, and a
    few hundred bytes of layout: 1.0x the float32 update."""

    class Big(_Site):
        def fit(self, parameters, config):
            rng = np.random.default_rng(self.partition)
            return [rng.normal(0, 1, (500, 400)).astype(np.float32)], 10, {}

    grid = LoopbackGrid(_client_app_for(Big), 3)
    result = _aggregator().run(grid, _fit_contents(grid), "1")
    float32_bytes = 500 * 400 * 4
    for node in grid.get_node_ids():
        upload = grid.traffic.up[node]
        assert upload <= float32_bytes * 1.005, upload / float32_bytes
    ratio = result.stats.bytes_up[p.COLLECT] / 3 / float32_bytes
    assert ratio <= 1.005, ratio


# --- against Flower's SecAgg+, in the Simulation Engine -----------------------


@pytest.mark.simulation
@pytest.mark.slow
def test_same_aggregate_as_flower_secaggplus_in_the_simulation_engine():
    from flwr.client.mod import secaggplus_mod
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import (
        MAIN_CONFIGS_RECORD,
        MAIN_PARAMS_RECORD,
        Key,
    )
    from secure_rounds import run_on_legacy

    from server.secure_agg_workflow import SecureAggWorkflow

    def either(msg, ctxt, call_next):
        """Ours for our rounds, Flower's for its own: one federation runs both."""
        if p.RECORD in msg.content.config_records:
            return secure_agg_mod(msg, ctxt, call_next)
        return secaggplus_mod(msg, ctxt, call_next)

    n = 4
    kwargs = dict(max_weight=float(max(SIZES)), clipping_range=CLIP, timeout=60)
    workflows = {
        "stock": SecAggPlusWorkflow(1.0, 0.67, quantization_range=2**24, **kwargs),
        "ours": SecureAggWorkflow(1.0, 0.67, **kwargs),
    }

    def both_rounds(grid, legacy, strategy):
        results = {}
        for rnd, (name, workflow) in enumerate(workflows.items(), start=1):
            legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] = rnd
            legacy.state.array_records[MAIN_PARAMS_RECORD] = (
                compat.parameters_to_arrayrecord(
                    ndarrays_to_parameters([np.zeros(3, np.float32)]), True
                )
            )
            strategy.aggregate = None
            workflow(grid, legacy)
            results[name] = (strategy.aggregate, list(strategy.site_metrics))
        return results

    results = run_on_legacy(_client_app(either), n, both_rounds)
    expected = weighted_mean(range(n))
    stock, ours = results["stock"][0], results["ours"][0]
    stock_step = 2 * CLIP / 2**24
    for s, o, e in zip(stock, ours, expected, strict=True):
        assert o.dtype == np.float32 and s.dtype == np.float64  # Flower sends float64
        np.testing.assert_allclose(s, e, atol=n * stock_step)
        np.testing.assert_allclose(o, e, atol=_tolerance(n))
        np.testing.assert_allclose(o, s, atol=n * stock_step + _tolerance(n))
    assert len(results["ours"][1]) == n and results["ours"][1][0]["loss"] == 0.5

"""One hostile training site cannot set the global model (issue 22, part 1).

Each case runs the ServerApp's own secure round (`_secure_round`, with its
checks) in process over both protocols, with one site sending what modified
code could: an inflated or negative example count, NaN, out-of-range lanes, an
edited weight lane, malformed replies. Every case is either refused at the
server with the failed check named, or bounded as PRIVACY.md states; the mean
the server returns is always finite.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord
from hostile_sites import CLIP, SHAPES, Site, honest_update, plain_mean, secure_round

from common.secure_agg import protocol as p
from common.secure_agg.quantize import FixedPoint
from server.aggregate_checks import (
    AggregateRejected,
    admit_sites,
    check_aggregate,
    check_declared,
)

PROTOCOLS = ("secaggplus", "fedbigbigan")


def at(value: float):
    """An update whose every value is `value`."""
    return lambda partition: [np.full(s, value, np.float32) for s in SHAPES]


def collect_mod(edit):
    """A client mod (outside the protocol's) that edits the masked upload."""

    def mod(msg, ctxt, call_next):
        reply = call_next(msg, ctxt)
        if reply.has_content() and p.MASKED in reply.content.array_records:
            edit(reply.content)
        return reply

    return mod


def edit_lanes(change):
    """Edit the masked lanes: `change(lanes)` on the whole vector's chunk 0."""

    def edit(content):
        record = content.array_records[p.MASKED]
        key = p.chunk_key(0)
        lanes = record[key].numpy().copy()
        change(lanes)
        record[key] = Array(lanes)

    return collect_mod(edit)


def tolerance(n_sites: int, weights: list[float]) -> float:
    """Quantisation error of a weighted mean: ours, or SecAgg+'s (28 bits,
    float32 arithmetic inside Flower: ~1e-7 here), whichever is larger."""
    ours = 2 * n_sites * FixedPoint(CLIP, n_sites).step * max(weights) / sum(weights)
    return max(ours, 1e-6)


def assert_finite(mean):
    assert all(np.isfinite(m).all() for m in mean)


# ---- honest rounds pass every check -----------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_honest_round_passes_the_checks_unchanged(protocol):
    sites = [Site(100), Site(50), Site(80)]
    mean, strategy = secure_round(sites, protocol)
    again, _ = secure_round(sites, protocol)
    for m, a, e in zip(mean, again, plain_mean(sites), strict=True):
        np.testing.assert_array_equal(m, a)  # the same bits, run after run
        np.testing.assert_allclose(m, e, atol=tolerance(3, [100, 50, 80]))
    assert strategy.dropped == 0


# ---- inflated, negative, NaN example counts ----------------------------------


def test_sites_declaring_unusable_or_inflated_counts_are_refused_before_training():
    sizes = {1: 120, 2: 10**9, 3: -5, 4: 0, 5: float("nan"), 6: 2.5, 7: True, 8: 80}
    admitted, refused = admit_sites(sizes, max_site_weight=200)
    assert admitted == {1: 120, 8: 80}
    assert [line.split(":")[0] for line in refused] == [
        f"node {n}" for n in range(2, 8)
    ]
    assert "above the agreed max-site-weight = 200" in refused[0]
    no_cap, refused = admit_sites(sizes, max_site_weight=0)
    assert no_cap == {1: 120, 2: 10**9, 8: 80} and len(refused) == 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_count_above_max_weight_never_makes_the_mean_its_own(protocol):
    """The cap is the round's max_weight: a site declaring 1e9 in its reply is
    refused by the server (SecAgg+: the round; ours: the site is dropped)."""
    sites = [Site(10**9, update=at(3.9)), Site(50), Site(80)]
    if protocol == "secaggplus":
        with pytest.raises(AggregateRejected, match="check 'declared weights'"):
            secure_round(sites, protocol, max_weight=120)
    else:
        mean, strategy = secure_round(sites, protocol, max_weight=120)
        assert strategy.dropped == 1
        for m, e in zip(mean, plain_mean(sites, keep=[1, 2]), strict=True):
            np.testing.assert_allclose(m, e, atol=tolerance(3, [50, 80]))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_negative_count_is_refused(protocol):
    sites = [Site(-100), Site(50), Site(80)]
    if protocol == "secaggplus":
        with pytest.raises(AggregateRejected, match="check 'declared weights'"):
            secure_round(sites, protocol, max_weight=100)
    else:
        mean, strategy = secure_round(sites, protocol, max_weight=100)
        assert strategy.dropped == 1
        assert_finite(mean)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_non_finite_update_never_reaches_the_model(protocol, value):
    sites = [Site(100, update=at(value)), Site(50), Site(80)]
    if protocol == "fedbigbigan":  # our client refuses to encode it: a dropout
        mean, strategy = secure_round(sites, protocol)
        assert strategy.dropped == 1
        assert_finite(mean)
    elif np.isnan(value):  # SecAgg+ quantises NaN to garbage outside the clip
        with pytest.raises(AggregateRejected, match="check 'clip' failed"):
            secure_round(sites, protocol)
    else:  # SecAgg+ clips inf to the clip: a bounded value like any other
        mean, _ = secure_round(sites, protocol)
        assert_finite(mean)
        assert max(float(np.abs(m).max()) for m in mean) <= CLIP


def test_the_all_nan_aggregate_of_an_infinite_clip_is_discarded():
    """`secagg-delta-clip = inf` is refused by the config; were it to reach a
    round, SecAgg+'s aggregate is all NaN, and the finite check stops it."""
    with pytest.raises(AggregateRejected, match="check 'finite'"):
        check_aggregate([np.full(3, np.nan)], float("inf"), 1)


# ---- our protocol: lanes edited after masking --------------------------------


def test_an_edited_weight_lane_is_caught_by_the_weight_check():
    bump = edit_lanes(lambda lanes: lanes.__setitem__(0, lanes[0] - np.uint32(2**20)))
    sites = [Site(100, tamper=bump), Site(50), Site(80)]
    with pytest.raises(RuntimeError, match="check 'weight' failed"):
        secure_round(sites, "fedbigbigan")


def test_a_declared_count_edited_in_clear_is_caught_by_the_weight_check():
    def claim_less(content):
        content.metric_records["fitres.num_examples"] = MetricRecord(
            {"num_examples": 10}
        )

    sites = [Site(100, tamper=collect_mod(claim_less)), Site(50), Site(80)]
    with pytest.raises(RuntimeError, match="check 'weight' failed"):
        secure_round(sites, "fedbigbigan")


def test_value_lanes_pushed_out_of_range_are_caught_by_the_clip_check():
    def push(lanes):
        lanes[1:] += np.uint32(2**31)

    sites = [Site(100, tamper=edit_lanes(push)), Site(50), Site(80)]
    with pytest.raises(AggregateRejected, match="check 'clip' failed"):
        secure_round(sites, "fedbigbigan")


# ---- our protocol: malformed replies drop the node, not the round ------------


def _reshape(content):
    record = content.config_records[p.RECORD]
    dims = list(record[p.LAYOUT_DIMS])
    dims[0], dims[1] = dims[1], dims[0]  # (6, 5) -> (5, 6): same size
    record[p.LAYOUT_DIMS] = dims


def _float64(content):
    record = content.config_records[p.RECORD]
    record[p.LAYOUT_DTYPES] = ["<f8"] * len(record[p.LAYOUT_DTYPES])


def _extra_array(content):
    content.array_records["smuggled"] = ArrayRecord({"x": Array(np.ones(3))})


def _wrong_chunk_dtype(content):
    record = content.array_records[p.MASKED]
    key = p.chunk_key(0)
    record[key] = Array(record[key].numpy().astype(np.float64))


@pytest.mark.parametrize(
    "malform",
    [_reshape, _float64, _extra_array, _wrong_chunk_dtype],
    ids=["shape", "float64", "extra-array", "chunk-dtype"],
)
def test_a_malformed_reply_drops_that_node_named_and_the_round_goes_on(malform):
    """The bad node has the lowest id (1000): it is the one named, not the
    honest node the old code compared everyone with."""
    sites = [Site(60, tamper=collect_mod(malform)), Site(100), Site(50), Site(80)]
    mean, strategy = secure_round(sites, "fedbigbigan")
    assert strategy.dropped == 1
    assert set(strategy.declared) == {1001, 1002, 1003}
    for m, e in zip(mean, plain_mean(sites, keep=[1, 2, 3]), strict=True):
        np.testing.assert_allclose(m, e, atol=tolerance(4, [100, 50, 80]))


def test_malformed_replies_beyond_the_threshold_stop_the_round_naming_them():
    bad = collect_mod(_extra_array)
    sites = [Site(60, tamper=bad), Site(100, tamper=bad), Site(50)]
    with pytest.raises(RuntimeError, match=r"node 1000 \(collect\): sent arrays next"):
        secure_round(sites, "fedbigbigan")


# ---- what one hostile site can still do: a bounded bias ----------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("n_sites", [3, 5])
def test_one_hostile_site_moves_the_mean_at_most_its_weight_share_of_2_clip(
    protocol, n_sites
):
    """Within the protocol (values clipped, the agreed cap as its count), one
    hostile site moves each value of the mean by at most w / W x 2 clip (w its
    weight, W the round's total): PRIVACY.md's bound, computed, not tuned."""
    cap = 120
    honest = [Site(n) for n in (100, 50, 80, 60, 90)[: n_sites - 1]]
    hostile = Site(cap, update=at(CLIP))  # every value at the clip, largest weight
    as_honest = Site(cap)  # the same site sending its honest update
    mean, _ = secure_round([hostile, *honest], protocol, max_weight=cap)
    reference, _ = secure_round([as_honest, *honest], protocol, max_weight=cap)
    weights = [cap] + [s.n for s in honest]
    share = cap / sum(weights)
    bound = share * 2 * CLIP
    shift = max(
        float(np.abs(m - r).max()) for m, r in zip(mean, reference, strict=True)
    )
    tol = 2 * tolerance(n_sites, weights)
    assert shift <= bound + tol
    # the attack is real: the honest values are in [-1, 1], so it moves every
    # value by at least share x (clip - 1)
    assert shift >= share * (CLIP - 1) - tol
    assert_finite(mean)


def test_modified_code_under_ours_stays_within_the_clip_box():
    """A site running modified code can add to its own value lanes (no range
    proof): the server cannot see it, only that the mean stays within +-clip.
    PRIVACY.md's bound for that case: the mean anywhere in the clip box, so a
    shift of at most 2 clip, never beyond it, never non-finite."""
    lanes_per_unit = FixedPoint(CLIP, 3).scale
    total_weight = (20 + 100 + 80) / 100  # the sum of n / max_weight

    def overshoot(lanes):  # moves the mean by +2.5 (its own value by 25)
        lanes[1:] += np.uint32(round(2.5 * total_weight * lanes_per_unit))

    sites = [Site(20, tamper=edit_lanes(overshoot)), Site(100), Site(80)]
    mean, _ = secure_round(sites, "fedbigbigan")
    honest, _ = secure_round([Site(20), Site(100), Site(80)], "fedbigbigan")
    shift = max(float(np.abs(m - h).max()) for m, h in zip(mean, honest, strict=True))
    assert 2.4 < shift <= 2 * CLIP  # real: beyond its weight share x 2 clip
    assert shift > 20 / 200 * 2 * CLIP  # (the bound for unmodified code)
    assert max(float(np.abs(m).max()) for m in mean) <= CLIP


# ---- the checks themselves ---------------------------------------------------


def test_check_declared_names_the_nodes_outside_the_weights():
    check_declared({1: 1, 2: 120}, 120, 3)
    with pytest.raises(AggregateRejected, match=r"round 3: .*node 2: 121, node 5: 0"):
        check_declared({1: 1, 2: 121, 5: 0}, 120, 3)


def test_check_aggregate_bounds():
    check_aggregate([np.full(4, CLIP), np.full(2, -CLIP)], CLIP, 1)
    with pytest.raises(AggregateRejected, match="check 'clip'.*array 1 reaches 4.1"):
        check_aggregate([np.zeros(3), np.array([4.1])], CLIP, 1)
    with pytest.raises(AggregateRejected, match="check 'finite'.*array 0 holds 1 "):
        check_aggregate([np.array([0.0, np.inf])], CLIP, 1)
    check_aggregate([np.full(3, 9.0), np.zeros(1)], CLIP, 1, tensor_clips=[9.0, 1.0])
    with pytest.raises(AggregateRejected, match="check 'clip'"):
        check_aggregate([np.full(3, 9.0), np.full(1, 1.5)], CLIP, 1, [9.0, 1.0])


def test_the_update_shapes_are_what_the_harness_sends():
    assert [u.shape for u in honest_update(0)] == list(SHAPES)

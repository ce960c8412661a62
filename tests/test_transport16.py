"""The float16 transport (run config `transport`): 16-bit masked lanes, public
per-array clips, float16 download, the audit of uint16 uploads, and the
float32 default left as it was."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from flwr.app import Array
from test_audit_mod import DISPATCH, FakeSite, _tamper, app_for, fit_content, refusal
from test_secure_agg import (
    CLIP,
    SIZES,
    _client_app,
    _fit_contents,
    _stage,
    site_update,
    weighted_mean,
)

from common.config import ConfigError, RunConfig
from common.secure_agg import masking
from common.secure_agg import protocol as p
from common.secure_agg.prg import expand
from common.secure_agg.quantize import FixedPoint, decode_weight, encode_weight
from server.privacy_summary import payload_bytes
from server.secure_agg_workflow import SecureAggregationError, SecureAggregator
from server.transport import FLOOR, MARGIN, downcast, next_clips
from simulations.loopback import LoopbackGrid

# per-array clips just above every site's largest value: nothing is clipped
CLIPS = [
    float(max(np.abs(site_update(i)[k]).max() for i in range(len(SIZES)))) * 1.01
    for k in range(3)
]


def _aggregator16(**kw) -> SecureAggregator:
    return SecureAggregator(
        kw.pop("num_shares", 1.0),
        kw.pop("threshold", 0.6),
        max_weight=max(SIZES),
        clipping_range=CLIP,
        lane_bits=16,
        tensor_clips=kw.pop("clips", CLIPS),
        **kw,
    )


def _bound16(n_clients: int, partitions) -> list[float]:
    """The stated error bound of the 16-bit mean, per array: each site's value
    moves by < 1 step (clip_k / levels) in stochastic rounding, and its weight
    by <= 1/2 level, which moves a weighted mean by <= max|x| per level; both
    over the total weight."""
    levels = FixedPoint(1.0, n_clients, 16).levels
    total = sum(SIZES[i] for i in partitions) / max(SIZES) - len(partitions) / levels
    largest = [
        max(np.abs(site_update(i)[k]).max() for i in partitions) for k in range(3)
    ]
    return [
        len(partitions) * (clip / levels + big / levels) / total
        for clip, big in zip(CLIPS, largest, strict=True)
    ]


def test_16_bit_lanes_keep_2_to_the_15_minus_headroom_levels():
    assert FixedPoint(1.0, 2, 16).levels == 2**13
    assert FixedPoint(1.0, 10, 16).levels == 2**11
    with pytest.raises(ValueError, match="no precision"):
        FixedPoint(1.0, 600, 16)
    values = np.array([-1.0, -0.5, 0.0, 0.25, 1.0])
    out = np.empty(5, np.uint16)
    FixedPoint(1.0, 3, 16).encode_into(values, out, np.random.default_rng(0))
    np.testing.assert_array_equal(
        out.view(np.int16), np.array([-1, -0.5, 0, 0.25, 1]) * 2**13
    )
    assert decode_weight(encode_weight(0.5, 3, 16), 3, 16) == 0.5


def test_masks_cancel_mod_2_to_the_16():
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 2**16, 5000, dtype=np.uint16) for _ in range(3)]
    pair = {(0, 1): b"\1" * 32, (0, 2): b"\2" * 32, (1, 2): b"\3" * 32}
    own = [bytes([10 + i]) * 32 for i in range(3)]
    uploads = []
    for i, x in enumerate(xs):
        y = x.copy()
        seeds = {j: pair[tuple(sorted((i, j)))] for j in range(3) if j != i}
        masking.mask(y, i, own[i], seeds)
        assert (y != x).mean() > 0.99  # what leaves is not the value
        uploads.append(y)
    total = np.sum(uploads, axis=0, dtype=np.uint16)
    masking.remove_self_masks(total, own)
    np.testing.assert_array_equal(total, np.sum(xs, axis=0, dtype=np.uint16))


def test_uint16_mask_is_the_aes_ctr_keystream_and_seekable():
    seed = b"\7" * 32
    full16 = expand(seed, 0, 999, np.uint16)
    # the same keystream bytes as the uint32 mask, cut into 16-bit lanes
    np.testing.assert_array_equal(full16[:998], expand(seed, 0, 499).view(np.uint16))
    for start in (1, 7, 8, 13, 500):
        np.testing.assert_array_equal(
            expand(seed, start, 400, np.uint16), full16[start : start + 400]
        )


def test_16_bit_secure_mean_equals_plain_mean_within_the_stated_bound():
    grid = LoopbackGrid(_client_app(), len(SIZES))
    result = _aggregator16().run(grid, _fit_contents(grid), "1")
    got = result.ndarrays("fitres.parameters")
    bounds = _bound16(5, range(5))
    for g, e, bound in zip(got, weighted_mean(range(5)), bounds, strict=True):
        assert g.dtype == np.float32
        assert np.abs(g - e).max() <= bound
    assert result.stats.lane_bits == 16 and result.stats.clipped == 0
    # the bound is tight enough to mean something: far below the values
    assert max(bounds) < 2e-3 * min(CLIPS)


def test_16_bit_upload_is_half_the_32_bit_one_and_uint16_on_the_wire():
    from client.secure_agg_mod import secure_agg_mod

    chunks: dict[int, list] = {32: [], 16: []}
    for bits, agg in (
        (32, SecureAggregator(1.0, 0.6, max_weight=max(SIZES), clipping_range=CLIP)),
        (16, _aggregator16()),
    ):

        def spy(msg, ctxt, call_next, seen=chunks[bits]):
            reply = call_next(msg, ctxt)
            masked = reply.content.array_records.get(p.MASKED)
            seen += [a.numpy() for a in (masked or {}).values()]
            return reply

        grid = LoopbackGrid(_client_app(spy, secure_agg_mod), len(SIZES))
        agg.run(grid, _fit_contents(grid), "1")
    values = len(SIZES) * (1 + sum(a.size for a in site_update(0)))
    assert {c.dtype for c in chunks[16]} == {np.dtype(np.uint16)}
    assert sum(c.nbytes for c in chunks[16]) == 2 * values
    assert sum(c.nbytes for c in chunks[32]) == 4 * values


@pytest.mark.parametrize("lost_at", [p.COLLECT, p.UNMASK])
def test_dropout_recovery_in_16_bit_lanes(lost_at):
    grid = LoopbackGrid(_client_app(), len(SIZES))
    lost = 1002
    grid.drop[lost] = lambda m: p.STAGES.index(_stage(m)) >= p.STAGES.index(lost_at)
    result = _aggregator16(num_shares=5, threshold=3).run(
        grid, _fit_contents(grid), "1"
    )
    uploaded = [0, 1, 3, 4] if lost_at == p.COLLECT else [0, 1, 2, 3, 4]
    bounds = _bound16(5, uploaded)
    for g, e, bound in zip(
        result.ndarrays(), weighted_mean(uploaded), bounds, strict=True
    ):
        assert np.abs(g - e).max() <= bound
    assert result.dropped == ({lost} if lost_at == p.COLLECT else set())


def test_values_beyond_a_tensor_clip_are_clipped_and_counted():
    clips = [CLIPS[0], CLIPS[1] / 2, CLIPS[2]]
    grid = LoopbackGrid(_client_app(), len(SIZES))
    result = _aggregator16(clips=clips).run(grid, _fit_contents(grid), "1")
    expected = sum(
        int((np.abs(site_update(i)[1]) > clips[1]).sum()) for i in range(len(SIZES))
    )
    assert result.stats.clipped == expected > 0
    assert np.abs(result.ndarrays()[1]).max() <= clips[1] * 1.001


def test_a_client_refuses_clips_that_do_not_match_its_arrays():
    grid = LoopbackGrid(_client_app(), 3)
    with pytest.raises(SecureAggregationError):
        _aggregator16(clips=CLIPS[:2]).run(grid, _fit_contents(grid), "1")


def test_aggregator_needs_clips_for_16_bit_lanes():
    with pytest.raises(ValueError, match="tensor_clips"):
        SecureAggregator(1.0, 0.6, lane_bits=16)
    with pytest.raises(ValueError, match="16 or 32"):
        SecureAggregator(1.0, 0.6, lane_bits=8, tensor_clips=[1.0])


# --- server.transport ----------------------------------------------------------


def test_next_clips_follow_the_mean_delta_with_margin_floor_and_cap():
    delta = [np.array([0.001, -0.002]), np.zeros(3), np.array([10.0])]
    assert next_clips(delta, 4.0) == [MARGIN * 0.002, FLOOR, 4.0]


def test_downcast_sends_float16_and_refuses_what_float16_cannot_hold():
    weights = [np.array([0.1, -3.0], np.float32), np.ones((2, 2), np.float32)]
    half = downcast(weights)
    assert [h.dtype for h in half] == [np.float16, np.float16]
    assert np.abs(half[0] - weights[0]).max() <= 2**-11 * 3.0
    with pytest.raises(ValueError, match="float16"):
        downcast([np.array([1e6], np.float32)])


# --- config ---------------------------------------------------------------------


def test_transport_defaults_to_float32():
    assert RunConfig().transport == "float32"
    assert RunConfig.from_flat({}).to_flat()["transport"] == "float32"


def test_float16_transport_needs_our_protocol():
    ok = RunConfig.from_flat(
        {"transport": "float16", "secure-aggregation": "fedbigbigan"}
    )
    assert ok.transport == "float16"
    with pytest.raises(ConfigError, match="fedbigbigan"):
        RunConfig.from_flat({"transport": "float16"})  # SecAgg+ by default
    with pytest.raises(ConfigError, match="transport must be one of"):
        RunConfig.from_flat({"transport": "bf16", "secure-aggregation": "fedbigbigan"})


def test_payload_halves_with_float16_and_reports_dtypes():
    arrays = [np.zeros((5, 7))]
    full = payload_bytes(arrays, "fedbigbigan")
    half = payload_bytes(arrays, "fedbigbigan", "float16")
    assert (full["down_bytes"], full["down_dtype"]) == (140, "float32")
    assert (half["down_bytes"], half["down_dtype"]) == (70, "float16")
    assert (half["up_bytes"], half["up_dtype"]) == (72, "uint16")
    assert full["up_dtype"] == "uint32"


# --- audit ----------------------------------------------------------------------


def _our_round16(mods, clips=None) -> dict:
    """One 16-bit round of our protocol over two FakeSites ("gan" phase, whose
    reply has the shapes of fit_content's parameters)."""
    replies: dict = {}

    def record(msg, ctxt, call_next):
        stage = msg.content.config_records[p.RECORD][p.STAGE]
        try:
            reply = call_next(msg, ctxt)
        except Exception as err:
            replies.setdefault(stage, {})[msg.metadata.dst_node_id] = err
            raise
        replies.setdefault(stage, {})[msg.metadata.dst_node_id] = reply
        return reply

    grid = LoopbackGrid(app_for(FakeSite(), [record, *mods]), 2)
    fit = {n: fit_content("gan") for n in grid.get_node_ids()}
    count = len(fit[min(fit)].array_records["fitins.parameters"])
    agg = SecureAggregator(
        2,
        2,
        max_weight=100.0,
        clipping_range=8.0,
        lane_bits=16,
        tensor_clips=clips or [1.0] * count,
    )
    with contextlib.suppress(SecureAggregationError):
        agg.run(grid, fit)
    return replies


def test_the_audit_allows_a_16_bit_upload():
    collect = _our_round16(DISPATCH)[p.COLLECT]
    for reply in collect.values():
        assert not isinstance(reply, Exception), reply
        chunks = reply.content.array_records[p.MASKED]
        assert {a.numpy().dtype for a in chunks.values()} == {np.dtype(np.uint16)}


def _swap_chunks(dtype, extra: int = 0):
    def change(content):
        record = content.array_records[p.MASKED]
        for key in list(record):
            values = record[key].numpy().astype(dtype)
            record[key] = Array(np.concatenate([values, np.zeros(extra, dtype)]))

    return change


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (_swap_chunks(np.uint32), "not uint16"),  # 32-bit lanes when 16 were asked
        (_swap_chunks(np.uint16, extra=3), "values"),  # three values too many
    ],
)
def test_the_audit_refuses_a_wrong_dtype_or_length_16_bit_upload(change, why):
    mods = [DISPATCH[0], _tamper(p.COLLECT, change), *DISPATCH[1:]]
    collect = _our_round16(mods)[p.COLLECT]
    reason = refusal(collect[min(collect)])
    assert p.MASKED in reason and why in reason, reason


def test_the_audit_refuses_uint16_chunks_in_a_32_bit_round():
    from test_audit_mod import our_round

    mods = [DISPATCH[0], _tamper(p.COLLECT, _swap_chunks(np.uint16)), *DISPATCH[1:]]
    collect = our_round(FakeSite(), mods, "gan")["collect"]
    reason = refusal(collect[min(collect)])
    assert "not uint32" in reason, reason


# --- the float32 default, unchanged ------------------------------------------------


def test_a_32_bit_round_asks_and_answers_as_before():
    """No 16-bit keys in the collect message or reply; uint32 chunks."""
    seen = {}

    def spy(msg, ctxt, call_next):
        asked = dict(msg.content.config_records[p.RECORD])
        reply = call_next(msg, ctxt)
        if asked[p.STAGE] == p.COLLECT:
            seen["asked"] = set(asked)
            seen["answer"] = set(reply.content.config_records[p.RECORD])
            seen["dtypes"] = {
                a.numpy().dtype for a in reply.content.array_records[p.MASKED].values()
            }
        return reply

    from client.secure_agg_mod import secure_agg_mod

    grid = LoopbackGrid(_client_app(spy, secure_agg_mod), 3)
    SecureAggregator(1.0, 0.6, max_weight=max(SIZES), clipping_range=CLIP).run(
        grid, _fit_contents(grid), "1"
    )
    assert seen["asked"] == {p.STAGE, p.ROUND_ID, p.NODES, p.CIPHERTEXTS}
    assert p.CLIPPED not in seen["answer"] and p.LANE_BITS not in seen["answer"]
    assert seen["dtypes"] == {np.dtype(np.uint32)}


def test_payload_reports_the_measured_bytes_of_the_bigbigan_rounds():
    from server.secure_agg_workflow import RoundStats
    from server.server_app import wire_figures

    sent = [np.zeros(1000, np.float16)]
    stats = RoundStats(lane_bits=16, asked=2, uploaded=2, clipped=3)
    stats.bytes_down = {"setup": 200, "collect": 4000}
    stats.bytes_up = {"setup": 100, "collect": 4100}
    gan = wire_figures(stats, 2, "gan", sent)
    assert (gan["down_bytes"], gan["up_bytes"]) == (2100, 2100)
    assert gan["down_ratio"] == gan["up_ratio"] == 2100 / 4000
    assert (gan["down_dtype"], gan["lane_bits"], gan["clipped"]) == ("float16", 16, 3)
    head = {**gan, "phase": "head", "up_ratio": 1.0}
    payload = payload_bytes([np.zeros(1000)], "fedbigbigan", "float16", [gan, head])
    assert payload["measured"]["rounds"] == [gan]  # BigBiGAN rounds only
    assert payload["measured"]["mean_up_ratio"] == 2100 / 4000

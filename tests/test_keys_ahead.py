"""Three round trips instead of four (issue 24): each round's unmask reply
carries the site's keys for the next round, which then starts at share keys.
Checked over the in-process grid: the stages each round runs, the same
aggregate, a key pair used once, and the fallbacks that keep dropout
tolerance (a site without keys sent ahead sets up; a site that lost its keys
sits one round out). Also the server's prompt reply loop (`PromptGrid`)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Message
from test_secure_agg import (
    _aggregator,
    _client_app,
    _fit_contents,
    _stage,
    _tolerance,
    weighted_mean,
)

from client.secure_agg_mod import secure_agg_mod
from common.config import RunConfig
from common.secure_agg import protocol as p
from server.prompt_grid import PromptGrid
from server.secure_agg_round import KeysAhead
from server.site_exchanges import _workflow
from simulations.loopback import LoopbackGrid

N = 5


def _assert_mean(result, partitions) -> None:
    for g, e in zip(result.ndarrays(), weighted_mean(partitions), strict=True):
        np.testing.assert_allclose(g, e, atol=_tolerance(N))


def _rounds(grid, aggregator, count: int):
    return [aggregator.run(grid, _fit_contents(grid), str(r)) for r in range(count)]


def test_later_rounds_skip_setup_and_sum_the_same():
    grid = LoopbackGrid(_client_app(), N)
    results = _rounds(grid, _aggregator(keys_ahead=KeysAhead()), 3)
    assert results[0].stats.stages == list(p.STAGES)
    for later in results[1:]:
        assert later.stats.stages == [p.SHARE_KEYS, p.COLLECT, p.UNMASK]
    for result in results:
        _assert_mean(result, range(N))
        assert result.dropped == set()
    assert grid.traffic.exchanges == 4 + 3 + 3


def test_without_keys_ahead_every_round_sets_up_and_asks_no_keys():
    asked = []

    def spy(msg, ctxt, call_next):
        asked.append(msg.content.config_records[p.RECORD].get(p.NEXT_KEYS))
        return secure_agg_mod(msg, ctxt, call_next)

    grid = LoopbackGrid(_client_app(spy), N)
    results = _rounds(grid, _aggregator(), 2)
    assert [r.stats.stages for r in results] == [list(p.STAGES)] * 2
    assert set(asked) == {None}
    assert all(p.AHEAD not in c.state.config_records for c in grid.contexts.values())


def test_a_key_pair_serves_one_round_and_is_fresh():
    """The keys a node sent ahead are the ones its next round uses, never the
    last round's; replaying that round's share-keys message is refused."""
    seen: list[tuple[str, int, Message, Message]] = []

    def spy(msg, ctxt, call_next):
        stage = _stage(msg)  # the mod takes its record out before the app runs
        reply = secure_agg_mod(msg, ctxt, call_next)
        seen.append((stage, msg.metadata.dst_node_id, msg, reply))
        return reply

    grid = LoopbackGrid(_client_app(spy), N)
    keys_ahead = KeysAhead()
    _rounds(grid, _aggregator(keys_ahead=keys_ahead), 2)
    node = 1003
    mine = [(s, m, r) for s, n, m, r in seen if n == node]
    setup_pk = mine[0][2].content.config_records[p.RECORD][p.PK_MASK]
    unmask_1 = mine[3][2].content.config_records[p.RECORD]
    share_2 = mine[4][1].content.config_records[p.RECORD]
    assert [s for s, _, _ in mine] == list(p.STAGES) + [
        p.SHARE_KEYS,
        p.COLLECT,
        p.UNMASK,
    ]
    peers = list(share_2[p.NODES])
    assert share_2[p.PK_MASK][peers.index(node)] == unmask_1[p.NEXT_PK_MASK]
    assert share_2[p.PK_ENC][peers.index(node)] == unmask_1[p.NEXT_PK_ENC]
    assert unmask_1[p.NEXT_PK_MASK] != setup_pk
    # a replay of round 2's share keys: round 2's private keys are gone (the
    # node holds round 3's, which do not match), and once those are used or
    # lost, it holds none
    for reason in ("shows this node's public keys wrongly", "holds no keys sent"):
        replay = Message(
            content=mine[4][1].content,
            dst_node_id=node,
            message_type=mine[4][1].metadata.message_type,
            group_id="replay",
        )
        (reply,) = grid.send_and_receive([replay])
        assert reply.has_error() and reason in reply.error.reason


def test_a_site_lost_at_unmask_sets_up_next_round():
    """A node that sent no keys ahead (lost before unmasking) gets the setup
    stage next round, alone; the others do not, and all five are summed."""
    grid = LoopbackGrid(_client_app(), N)
    aggregator = _aggregator(num_shares=N, threshold=3, keys_ahead=KeysAhead())
    grid.drop[1002] = lambda m: _stage(m) == p.UNMASK
    first = aggregator.run(grid, _fit_contents(grid), "1")
    _assert_mean(first, range(N))  # it uploaded: its self mask was rebuilt
    del grid.drop[1002]
    setups = []
    grid.client_app = _client_app(
        lambda m, c, nxt: (
            setups.append(m.metadata.dst_node_id) if _stage(m) == p.SETUP else None,
            secure_agg_mod(m, c, nxt),
        )[1]
    )
    second = aggregator.run(grid, _fit_contents(grid), "2")
    assert second.stats.stages == list(p.STAGES)
    assert setups == [1002]
    _assert_mean(second, range(N))
    assert second.dropped == set()


def test_a_site_that_lost_its_keys_sits_one_round_out():
    """The server holds keys a restarted node no longer has: the node refuses
    share keys and drops out like any other (the rest are summed); the round
    after, it sets up again and is summed."""
    grid = LoopbackGrid(_client_app(), N)
    aggregator = _aggregator(num_shares=N, threshold=3, keys_ahead=KeysAhead())
    aggregator.run(grid, _fit_contents(grid), "1")
    grid.contexts[1001].state.config_records.pop(p.AHEAD)  # the node restarted
    second = aggregator.run(grid, _fit_contents(grid), "2")
    assert second.stats.stages == [p.SHARE_KEYS, p.COLLECT, p.UNMASK]
    _assert_mean(second, [0, 2, 3, 4])
    assert second.dropped == {1001}
    assert any("no keys sent ahead" in f for f in second.failures)
    third = aggregator.run(grid, _fit_contents(grid), "3")
    assert third.stats.stages == list(p.STAGES)
    _assert_mean(third, range(N))


def test_malformed_keys_ahead_are_not_kept():
    """Keys that are not two raw 32-byte keys are ignored: that node sets up."""

    def bad_keys(msg, ctxt, call_next):
        reply = secure_agg_mod(msg, ctxt, call_next)
        record = reply.content.config_records[p.RECORD]
        if msg.metadata.dst_node_id == 1000 and p.NEXT_PK_MASK in record:
            record[p.NEXT_PK_MASK] = b"short"
        return reply

    grid = LoopbackGrid(_client_app(bad_keys), N)
    keys_ahead = KeysAhead()
    _aggregator(keys_ahead=keys_ahead).run(grid, _fit_contents(grid), "1")
    assert set(keys_ahead.keys) == {1001, 1002, 1003, 1004}


def test_the_run_config_switches_keys_ahead():
    held = KeysAhead()
    on = RunConfig.from_flat({"secure-aggregation": "fedbigbigan"})
    off = RunConfig.from_flat(
        {"secure-aggregation": "fedbigbigan", "secagg-keys-ahead": False}
    )
    assert _workflow(on, 4.0, 100.0, keys_ahead=held).keys_ahead is held
    assert _workflow(off, 4.0, 100.0, keys_ahead=held).keys_ahead is None


# --- the prompt reply loop ----------------------------------------------------


class _SlowGrid(LoopbackGrid):
    """Replies become visible `delay` seconds after they were pushed."""

    def __init__(self, delay: float) -> None:
        super().__init__(_client_app(), 2)
        self.delay, self.pulls, self._pushed_at = delay, 0, 0.0

    def push_messages(self, messages):
        self._pushed_at = time.monotonic()
        return super().push_messages(messages)

    def pull_messages(self, message_ids):
        self.pulls += 1
        if time.monotonic() - self._pushed_at < self.delay:
            return []
        return super().pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("PromptGrid must use push and pull")


def _setup_messages(grid) -> list[Message]:
    grid.set_run(grid.run)
    return [
        Message(
            content=_fit_contents(grid)[n],
            dst_node_id=n,
            message_type="train",
            group_id="g",
        )
        for n in grid.get_node_ids()
    ]


def test_prompt_grid_returns_replies_soon_after_they_arrive():
    slow = _SlowGrid(delay=0.3)
    start = time.monotonic()
    replies = list(PromptGrid(slow, 0.02).send_and_receive(_setup_messages(slow)))
    took = time.monotonic() - start
    assert {r.metadata.src_node_id for r in replies} == {1000, 1001}
    assert 0.3 <= took < 1.0  # Flower's own loop: 3 s at least
    assert slow.pulls >= 5


def test_prompt_grid_stops_at_the_timeout_with_what_came():
    slow = _SlowGrid(delay=30.0)
    start = time.monotonic()
    replies = PromptGrid(slow, 0.05).send_and_receive(
        _setup_messages(slow), timeout=0.4
    )
    assert list(replies) == []
    assert 0.4 <= time.monotonic() - start < 1.5


def test_prompt_grid_refuses_a_non_positive_interval():
    with pytest.raises(ValueError, match="interval"):
        PromptGrid(LoopbackGrid(_client_app(), 2), 0)

"""What the message audit judges a reply against: the train phases' arrays and
metrics, and what the incoming message names (protocol, stage, node ids, shapes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)

from client.audit_records import AuditRefusal, _array_header
from common.config import Z_DIM, ConfigError, get_preset
from common.evaluation import feature_kinds
from common.evaluation.metrics import GRID_BINS, histogram_keys
from common.secure_agg import protocol as secure

SECAGGPLUS, OURS = "secaggplus", "fedbigbigan"

Shapes = list[tuple[int, ...]]


@dataclass(frozen=True)
class Phase:
    """What a train reply of one phase may carry."""

    # (incoming shapes, z, feature kinds) -> reply shapes
    arrays: Callable[[Shapes, int, tuple[str, ...]], Shapes]
    metrics: frozenset[str]


# Every train reply's cost on the node (client_app.node_cost): the server times
# its rounds' overhead with them. Not patient data: a site's size is sent anyway.
NODE_COST_METRICS = frozenset({"seconds", "peak-rss-mb"})


def _moments(incoming: Shapes, z: int, kinds: tuple[str, ...]) -> Shapes:
    """Each kind's per-feature mean and mean square."""
    return [(feature_kinds.dim(k, z),) for k in kinds for _ in range(2)]


def _head_statistics(incoming: Shapes, z: int, kinds: tuple[str, ...]) -> Shapes:
    """Each kind's X'X/n and X'y/n, of training then of validation slices."""
    out: Shapes = []
    for kind in kinds:
        d = feature_kinds.dim(kind, z) + 1
        out += [(d, d), (d,)] * 2
    return out


# The ClientApp's train phases (client/client_app.py). A new phase needs a line.
# The feature kinds (common.evaluation.feature_kinds) are those the server's
# message names.
PHASES: dict[str, Phase] = {
    "gan": Phase(
        lambda incoming, z, kinds: list(incoming),
        frozenset({"d_loss", "e_loss", "g_loss", "clipped"}),
    ),
    "moments": Phase(_moments, frozenset({"clipped"})),
    "head": Phase(_head_statistics, frozenset({"clipped"})),
    "logit": Phase(lambda incoming, z, kinds: [(z + 1,)], frozenset({"clipped"})),
    "eval": Phase(  # per head, one score histogram per split, level and class
        lambda incoming, z, kinds: (
            [(GRID_BINS,)]
            * (len(histogram_keys()) * len(feature_kinds.head_names(kinds)))
        ),
        frozenset({"clipped"}),
    ),
}


@dataclass
class _Incoming:
    """What the reply is judged against, read before the ClientApp runs (the
    SecAgg+ mod consumes part of the incoming message)."""

    message_type: str
    protocol: str | None = None  # SECAGGPLUS, OURS, or None (a plain message)
    stage: str | None = None
    phase: str | None = None
    z: int = Z_DIM
    shapes: Shapes = field(default_factory=list)
    node_ids: frozenset[int] = frozenset()
    lane_bits: object = 32  # our collect stage: the lanes the server asked for
    kinds: tuple[str, ...] | None = ("model",)  # None: unknown kinds named

    @classmethod
    def read(cls, msg: Message) -> _Incoming:
        content = msg.content if msg.has_content() else RecordDict()
        out = cls(msg.metadata.message_type)
        secagg = content.config_records.get(RECORD_KEY_CONFIGS)
        ours = content.config_records.get(secure.RECORD)
        if secagg is not None and ours is not None:
            out.protocol = "both"  # refused: one round, one protocol
        elif ours is not None:
            out._read_ours(ours)
        elif secagg is not None and isinstance(secagg.get(Key.STAGE), str):
            out.protocol = SECAGGPLUS
            out.stage = secagg[Key.STAGE]
            if out.stage == Stage.SHARE_KEYS:
                out.node_ids = frozenset(int(k) for k in secagg if k != Key.STAGE)
            elif out.stage == Stage.UNMASK:
                out.node_ids = frozenset(
                    int(n)
                    for key in (Key.ACTIVE_NODE_ID_LIST, Key.DEAD_NODE_ID_LIST)
                    for n in secagg.get(key, [])
                )
        config = content.config_records.get(
            "fitins.config", content.config_records.get("evaluateins.config")
        )
        if config is not None:
            try:
                out.kinds = feature_kinds.parse(config.get(feature_kinds.CONFIG_KEY))
            except ValueError:
                out.kinds = None
            phase = config.get("phase")
            out.phase = phase if isinstance(phase, str) else None
            try:
                out.z = get_preset(str(config.get("preset", "tiny"))).z_dim
            except ConfigError:
                out.z = Z_DIM
        params = content.array_records.get("fitins.parameters")
        if params is not None:
            try:
                out.shapes = [_array_header(a)[1] for a in params.values()]
            except AuditRefusal:  # unreadable: no reply array can match
                out.shapes = []
        return out

    def _read_ours(self, record) -> None:
        """Stage and named node ids of our protocol's record (what the stage's
        reply may name: share-keys' neighbours, unmask's uploaders and dropped)."""
        self.protocol = OURS
        stage = record.get(secure.STAGE)
        self.stage = stage if isinstance(stage, str) else ""
        names = {
            secure.SHARE_KEYS: (secure.NODES,),
            secure.UNMASK: (secure.ACTIVE, secure.DEAD),
        }.get(self.stage, ())
        ids = [n for key in names for n in record.get(key, [])]
        self.node_ids = frozenset(
            n for n in ids if isinstance(n, int) and not isinstance(n, bool)
        )
        if self.stage == secure.COLLECT:
            self.lane_bits = record.get(secure.LANE_BITS, 32)

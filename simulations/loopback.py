"""An in-process Grid: a ServerApp's messages go straight to ClientApps in the
same process, through a serialisation round trip (so nothing is shared by
reference and every byte that would travel is counted).

For measuring protocols without Ray or a SuperLink in the way (each delivery is
one ClientApp call, one after another); `drop` makes chosen nodes fall silent
from a given stage on, as a lost site would.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


def copy_through_wire(content: RecordDict) -> tuple[RecordDict, int]:
    """`content` serialised and parsed back, and its size in bytes."""
    blob = recorddict_to_proto(content).SerializeToString()
    proto = ProtoRecordDict()
    proto.ParseFromString(blob)
    return recorddict_from_proto(proto), len(blob)


@dataclass
class Traffic:
    """Bytes per node and direction, and the time spent in the ClientApps."""

    down: dict[int, int] = field(default_factory=dict)  # server -> node
    up: dict[int, int] = field(default_factory=dict)  # node -> server
    client_seconds: float = 0.0
    wire_seconds: float = 0.0  # serialising and parsing
    exchanges: int = 0  # send_and_receive calls

    def reset(self) -> None:
        self.down.clear()
        self.up.clear()
        self.client_seconds = self.wire_seconds = 0.0
        self.exchanges = 0


class LoopbackGrid(Grid):
    """A Grid whose nodes are `client_app` calls in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        node_config: Callable[[int], dict] | None = None,
        run_config: dict | None = None,
    ) -> None:
        self.client_app = client_app
        # Flower stamps new messages with the process's task identity
        if TaskIdentity._run_id is None:
            TaskIdentity.run_id = 1
        if TaskIdentity._node_id is None:
            TaskIdentity.node_id = SUPERLINK_NODE_ID
        if TaskIdentity._task_id is None:
            TaskIdentity.task_id = 1
        self.contexts = {
            1000 + i: Context(
                run_id=1,
                node_id=1000 + i,
                node_config=(node_config(i) if node_config else {"partition-id": i}),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i in range(num_nodes)
        }
        self.traffic = Traffic()
        # node id -> predicate on the incoming message: True = stay silent
        self.drop: dict[int, Callable[[Message], bool]] = {}
        self._ids = itertools.count(1)
        self._pending: dict[str, Message] = {}
        self._run = Run.create_empty(run_id=1)

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(
            content=content,
            dst_node_id=dst_node_id,
            message_type=message_type,
            group_id=group_id,
            ttl=ttl,
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            reply = self._deliver(message)
            if reply is not None:
                self._pending[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._pending.pop(i) for i in list(message_ids) if i in self._pending]

    def send_and_receive(self, messages, *, timeout=None):
        self.traffic.exchanges += 1
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if node in self.drop and self.drop[node](message):
            return None
        start = time.perf_counter()
        content, size = copy_through_wire(message.content)
        self.traffic.down[node] = self.traffic.down.get(node, 0) + size
        incoming = Message(
            content=content,
            dst_node_id=node,
            message_type=message.metadata.message_type,
            group_id=message.metadata.group_id,
        )
        incoming.metadata.__dict__["_message_id"] = message.metadata.message_id
        incoming.metadata.__dict__["_src_node_id"] = 0
        # the node sees this grid's run, as from a SuperLink: `Message()` stamps
        # the process-wide TaskIdentity.run_id, which an earlier in-process
        # `run_simulation` leaves at its random run id (signed run ids differ)
        incoming.metadata.__dict__["_run_id"] = self.run.run_id
        wire = time.perf_counter() - start
        start = time.perf_counter()
        try:
            reply = self.client_app(incoming, self.contexts[node])
        except Exception as err:  # as a SuperNode does: an error reply
            reason = f"{type(err).__name__}: {err}"
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
            reply = Message(error, reply_to=incoming)
        self.traffic.client_seconds += time.perf_counter() - start
        start = time.perf_counter()
        if reply.has_content():
            content, size = copy_through_wire(reply.content)
            self.traffic.up[node] = self.traffic.up.get(node, 0) + size
            reply = Message(content, reply_to=incoming)
        else:
            reply = Message(reply.error, reply_to=incoming)
        reply.metadata.__dict__["_src_node_id"] = node
        self.traffic.wire_seconds += wire + time.perf_counter() - start
        return reply

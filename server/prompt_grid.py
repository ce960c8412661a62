"""`PromptGrid`: a Grid whose `send_and_receive` looks for replies every
`interval` seconds instead of Flower's fixed 3 s.

Flower 1.42's deployed grid (`HttpGrid.send_and_receive`) sleeps 3 s between
pulls, so every stage of a secure round waits on average 1.5 s, and never less
than 3 s, after its last reply has reached the SuperLink (benchmarks/README.md,
"Where a stage's ~7 s go"). This loop uses the same public `push_messages` and
`pull_messages` of the Grid, only more often; a pull that finds nothing is one
small request to the SuperLink.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class PromptGrid(Grid):
    """`grid` with replies pulled every `interval` seconds (everything else is
    the wrapped grid's own)."""

    def __init__(self, grid: Grid, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"the pull interval must be > 0 s, got {interval}")
        self._grid = grid
        self.interval = float(interval)

    def __getattr__(self, name: str):  # close, and whatever else a grid has
        return getattr(self._grid, name)

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(
            content, message_type, dst_node_id, group_id, ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push `messages`, then pull until every one has its reply or
        `timeout` seconds have passed (None: wait for all), as Flower's."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting -= {m.metadata.reply_to_message_id for m in got}
            left = math.inf if deadline is None else deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            time.sleep(min(self.interval, left))
        return replies

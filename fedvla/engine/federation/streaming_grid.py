"""A grid whose send_and_receive hands the replies on as they arrive.

Flower's grids collect every reply of a round in a list before the strategy sees any: a round's
memory then grows with its clients (one update each). Through StreamingGrid the strategy's
aggregate_train reads the replies as they come in (the engine's WeightedAverage adds each to a
running sum and drops it). Everything else is the wrapped grid's.
"""

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

from fedvla.engine.federation.wrapped_grid import WrappedGrid

DEFAULT_PULL_INTERVAL_S = 0.05


class StreamingGrid(WrappedGrid):
    def __init__(self, grid: Grid, pull_interval_s: float = DEFAULT_PULL_INTERVAL_S) -> None:
        super().__init__(grid)
        self.pull_interval_s = pull_interval_s

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Push the messages now; the replies, as they arrive, until all have or `timeout`
        seconds have passed (None: no limit)."""
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._replies(waiting, deadline)

    def _replies(self, waiting: set[str], deadline: float | None) -> Iterator[Message]:
        while waiting and (deadline is None or time.monotonic() < deadline):
            arrived = list(self.grid.pull_messages(waiting))
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            while arrived:
                yield arrived.pop(0)  # not kept here once handed on
            if waiting:
                time.sleep(self.pull_interval_s)

"""A grid whose send_and_receive hands the replies on as they arrive.

Flower's grids collect every reply of a round in a list before the strategy sees any: a round's
memory then grows with its clients (one update each). Through StreamingGrid the strategy's
aggregate_train reads the replies as they come in (the engine's WeightedAverage adds each to a
running sum and drops it). Everything else is the wrapped grid's.

With `max_in_flight` (simulation) it also pushes a round's messages a few at a time: no more
than that many are ever pushed and not yet handed on. A simulated federation's clients answer
as fast as its actors train, whatever the server is doing; when the server adds updates more
slowly than they arrive (a loaded machine), every reply pushed ahead would wait in the link
state, one update each. Pushed in the order given, as before; a deployment's sites train at
once, so its grid pushes everything.
"""

import itertools
import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

from fedvla.engine.federation.wrapped_grid import WrappedGrid

DEFAULT_PULL_INTERVAL_S = 0.05


class StreamingGrid(WrappedGrid):
    def __init__(
        self,
        grid: Grid,
        pull_interval_s: float = DEFAULT_PULL_INTERVAL_S,
        max_in_flight: int | None = None,
    ) -> None:
        super().__init__(grid)
        self.pull_interval_s = pull_interval_s
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Push the messages now (the first `max_in_flight` of them, the others as replies are
        handed on); the replies, as they arrive, until all have or `timeout` seconds have passed
        (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        unsent = iter(messages)
        waiting: set[str] = set()
        self._push(unsent, waiting)
        return self._replies(unsent, waiting, deadline)

    def _push(self, unsent: Iterator[Message], waiting: set[str]) -> None:
        """Push messages until max_in_flight await their replies (or none is left)."""
        while self.max_in_flight is None or len(waiting) < self.max_in_flight:
            room = None if self.max_in_flight is None else self.max_in_flight - len(waiting)
            batch = list(itertools.islice(unsent, room))
            if not batch:
                return
            waiting.update(self.grid.push_messages(batch))  # one refused is not waited for

    def _replies(
        self, unsent: Iterator[Message], waiting: set[str], deadline: float | None
    ) -> Iterator[Message]:
        while waiting and (deadline is None or time.monotonic() < deadline):
            arrived = list(self.grid.pull_messages(waiting))
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            while arrived:
                yield arrived.pop(0)  # not kept here once handed on
                self._push(unsent, waiting)  # the next message, once this reply is done with
            if waiting:
                time.sleep(self.pull_interval_s)

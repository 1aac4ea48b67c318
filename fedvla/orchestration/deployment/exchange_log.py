"""What each exchange of messages through the SuperLink cost the ServerApp, in its log.

An exchange is one step of a round (the query, a train, an evaluate): its messages pushed to
the SuperLink, then their replies pulled as they come. Once its last reply is in (or the next
exchange starts without it), one EXCHANGE_LOG_PREFIX line says how long the push took, how
long after it the last reply was in, and how many pull requests that took and how long the
ServerApp spent inside them (the rest of the wait is the sites and the SuperLink relaying).
The run's federation.log holds these lines; bench/deployment_run.py reads them.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fedvla.core.log_records import log_record, read_log_records

EXCHANGE_LOG_PREFIX = "grid exchange "


@dataclass
class Exchange:
    message_type: str
    messages: int
    push_seconds: float
    replies: int = 0
    until_last_reply_seconds: float = 0.0
    pull_requests: int = 0
    pull_seconds: float = 0.0


class ExchangeLog:
    """Times the pushes and pulls of a grid; ``emit`` writes one line per exchange."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.current: Exchange | None = None
        self._pushed_at = 0.0

    def pushed(self, message_type: str, messages: int, started: float) -> None:
        self.flush()
        self._pushed_at = time.perf_counter()
        self.current = Exchange(message_type, messages, round(self._pushed_at - started, 4))

    def pulled(self, started: float, replies: int) -> None:
        if self.current is None:
            return
        now = time.perf_counter()
        exchange = self.current
        exchange.pull_requests += 1
        exchange.pull_seconds += now - started
        exchange.replies += replies
        if replies:
            exchange.until_last_reply_seconds = now - self._pushed_at
        if exchange.replies >= exchange.messages:
            self.flush()

    def flush(self) -> None:
        if self.current is not None:
            record = asdict(self.current)
            for key in ("until_last_reply_seconds", "pull_seconds"):
                record[key] = round(record[key], 4)
            self.emit(log_record(EXCHANGE_LOG_PREFIX, record))
            self.current = None


def read_exchanges(text: str) -> list[dict[str, Any]]:
    """The EXCHANGE_LOG_PREFIX records of a federation.log."""
    return read_log_records(text, EXCHANGE_LOG_PREFIX)

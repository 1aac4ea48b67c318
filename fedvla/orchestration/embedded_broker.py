"""The embedded default's broker: kombu's SQL transport on a SQLite file, made safe for two
processes (the web app sends, the worker polls).

kombu's SQL channel has two flaws once a second process shares the file:
- it creates a queue's row on first use, guarded only by a lock inside one process, so the web
  app and a worker that start on a new queue together race to insert it: the loser's unique
  constraint error failed the launch (503) though the broker was up;
- it swallows a failed commit of a sent message (``except OperationalError: rollback()``), so a
  database that stays locked beyond the busy timeout dropped the task while the launch answered
  202, and the run waited in ``queued`` forever.
Here the loser of the race reads the row the winner wrote, and a failed send raises, which
kombu's publish retry and then the launch's 503 handle: no run is created for a task not queued.
"""

import json
from typing import Any

from kombu.transport.sqlalchemy import Channel as SqlAlchemyChannel
from kombu.transport.sqlalchemy import Transport as SqlAlchemyTransport
from sqlalchemy.exc import IntegrityError

BUSY_TIMEOUT_S = 15.0
"""How long a SQLite connection waits for another process's write lock before it fails."""


def transport_options() -> dict[str, object]:
    """kombu's SQL channel hands its transport options to ``create_engine``."""
    return {"connect_args": {"timeout": BUSY_TIMEOUT_S}}


class EmbeddedBrokerChannel(SqlAlchemyChannel):
    def _get_or_create(self, queue: str) -> Any:
        try:
            return super()._get_or_create(queue)
        except IntegrityError:  # another process created the queue's row first
            self.session.rollback()
            return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).one()

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        message = self.message_cls(json.dumps(payload), self._get_or_create(queue))
        self.session.add(message)
        try:
            self.session.commit()
        except Exception:
            self.session.rollback()
            raise


class EmbeddedBrokerTransport(SqlAlchemyTransport):
    """Polls its table every 0.1 s instead of every second.

    kombu reads ``polling_interval`` from the transport options, but its SQL channel also hands
    every option to ``create_engine``, which refuses it; so the interval is set on a subclass.
    """

    Channel = EmbeddedBrokerChannel
    polling_interval = 0.1

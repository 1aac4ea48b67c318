"""A run's event log: appending events in id order, reading them back, and Redis fan-out.

The RunEvent table is the source of truth. Readers follow it by id ("everything after the last
id I saw"), which is only safe if a run's events become visible in id order. SQLite serialises
writers, so that holds there; on PostgreSQL two writers (the supervisor and the federation) could
commit out of order, so each append takes a per-run transaction lock first.
Redis, when configured, only wakes readers up sooner: they still read the events from the table.
"""

import json
import logging
from collections.abc import Sequence
from typing import Any

import redis
from sqlalchemy import text
from sqlmodel import Session, col, select

from fedvla.core.models import RunEvent
from fedvla.core.schemas.common import utc_json

log = logging.getLogger(__name__)

EVENT_KINDS = ("status", "log", "round", "checkpoint", "resources")
_LOCK_NAMESPACE = 4242
"""First key of the PostgreSQL advisory lock pair (namespace, run id) that orders a run's events."""


def channel(run_id: int) -> str:
    return f"fedvla:run:{run_id}"


def append_event(
    session: Session, run_id: int, kind: str, message: str = "", data: dict[str, Any] | None = None
) -> RunEvent:
    """Adds an event to the session (flushed, so it has its id); the caller commits."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:ns, :run)"),
            {"ns": _LOCK_NAMESPACE, "run": run_id},
        )
    event = RunEvent(run_id=run_id, kind=kind, message=message, data=data or {})
    session.add(event)
    session.flush()
    return event


def event_json(event: RunEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "run_id": event.run_id,
        "kind": event.kind,
        "message": event.message,
        "data": event.data,
        "created_at": utc_json(event.created_at),
    }


def events_after(
    session: Session, run_id: int, after_id: int = 0, limit: int = 100
) -> Sequence[RunEvent]:
    return session.exec(
        select(RunEvent)
        .where(RunEvent.run_id == run_id, col(RunEvent.id) > after_id)
        .order_by(col(RunEvent.id))
        .limit(limit)
    ).all()


def events_of_kind(
    session: Session, run_id: int, kind: str, limit: int = 10_000
) -> Sequence[RunEvent]:
    """The newest ``limit`` events of one kind, oldest first."""
    newest = session.exec(
        select(RunEvent)
        .where(RunEvent.run_id == run_id, RunEvent.kind == kind)
        .order_by(col(RunEvent.id).desc())
        .limit(limit)
    ).all()
    return list(reversed(newest))


class EventPublisher:
    """Publishes committed events on Redis; with no Redis URL it does nothing.

    A failed publish is logged, never raised: the event is already in the database, and readers
    fall back to polling it.
    """

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url) if redis_url else None

    def publish(self, events: Sequence[RunEvent]) -> None:
        if self._client is None:
            return
        for event in events:
            try:
                self._client.publish(channel(event.run_id), json.dumps(event_json(event)))
            except redis.RedisError as error:
                log.warning("could not publish event %s on Redis: %s", event.id, error)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


_publishers: dict[str, EventPublisher] = {}


def publisher_for(redis_url: str) -> EventPublisher:
    """One publisher (and Redis connection pool) per URL, shared by a process's requests."""
    if redis_url not in _publishers:
        _publishers[redis_url] = EventPublisher(redis_url)
    return _publishers[redis_url]

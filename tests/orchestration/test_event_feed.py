"""The shared event feed of a run (fedvla.core.services.event_feed), driven directly on one event
loop: followers that start behind it or fall behind its buffer read the table and still get every
event
once; the feed stops when its last follower leaves."""

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import RunEvent, RunStatus
from fedvla.core.services import event_feed, runs
from fedvla.core.services.event_feed import EventHub
from fedvla.core.services.events import EventPublisher, events_after
from fedvla.orchestration.db_reporter import DbReporter
from fedvla.orchestration.dispatch import run_sender

NO_REDIS = EventPublisher("")


@pytest.fixture
def small_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 5 and a buffer of 4, polled often: a few dozen events cross every boundary."""
    monkeypatch.setattr(event_feed, "FOLLOW_PAGE", 5)
    monkeypatch.setattr(event_feed, "BUFFER_EVENTS", 4)
    monkeypatch.setattr(event_feed, "POLL_INTERVAL_S", 0.01)


class CountingHub(EventHub):
    """Notes where each follower's own read of the table started."""

    def __init__(self, engine: Engine, redis_url: str) -> None:
        super().__init__(engine, redis_url)
        self.table_reads: list[int] = []

    def read_page(self, run_id: int, after_id: int) -> Sequence[RunEvent]:
        self.table_reads.append(after_id)
        return super().read_page(run_id, after_id)


def _running_run(engine: Engine, settings: Settings, make_experiment) -> int:
    with Session(engine) as session:
        run = runs.launch_run(
            session,
            run_sender(settings),
            NO_REDIS,
            experiment_id=make_experiment().id,
            actor="tests",
        )
        assert run.id is not None and runs.claim_run(session, NO_REDIS, run.id, "test-worker")
        return run.id


def _stored(engine: Engine, run_id: int) -> list[int]:
    with Session(engine) as session:
        return [event.id or 0 for event in events_after(session, run_id, 0, 1000)]


async def _collect(events: AsyncIterator[RunEvent], into: list[int]) -> None:
    async for event in events:
        into.append(event.id or 0)


def test_followers_behind_the_feed_read_the_table_and_miss_nothing(
    engine: Engine, fast_settings: Settings, make_experiment, small_feed: None
) -> None:
    run_id = _running_run(engine, fast_settings, make_experiment)
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    for index in range(12):
        reporter.log(f"before {index}")
    written_before = _stored(engine, run_id)
    hub = CountingHub(engine, "")

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        live: list[int] = []  # joins first, at the newest event: the feed starts there
        late: list[int] = []  # joins after, from the start: 14 events behind the feed
        slow: list[int] = []  # takes one event, then stops reading while 30 are written
        first = asyncio.create_task(_collect(hub.follow(run_id, written_before[-1]), live))
        await asyncio.sleep(0)  # the first follower joins: the feed starts at its event
        assert len(hub.feeds(run_id)) == 1
        behind = asyncio.create_task(_collect(hub.follow(run_id, 0), late))
        slow_events = hub.follow(run_id, written_before[-1])
        await asyncio.to_thread(reporter.log, "first live")
        slow.append((await anext(slow_events)).id or 0)
        for index in range(30):
            await asyncio.to_thread(reporter.log, f"live {index}")
        while len(live) < 31:  # the feed read them all, and dropped all but 4 from its buffer
            await asyncio.sleep(0.01)
        with Session(engine) as session:
            runs.finish_run(session, NO_REDIS, run_id, RunStatus.succeeded)
        await _collect(slow_events, slow)
        await asyncio.wait_for(asyncio.gather(first, behind), 30)
        assert hub.feeds(run_id) == []
        return live, late, slow

    live, late, slow = asyncio.run(scenario())
    reporter.close()

    stored = _stored(engine, run_id)
    assert len(stored) == 2 + 12 + 31 + 1
    assert late == stored
    assert live == stored[len(written_before) :]
    assert slow == live
    assert hub.feeds_started == 1
    # The late follower read its backlog from the table in pages, from the start; the slow one
    # read it from the event it had taken, the buffer having moved on.
    assert hub.table_reads[0] == 0
    assert slow[0] in hub.table_reads


def test_the_feed_stops_when_its_last_follower_leaves(
    engine: Engine, fast_settings: Settings, make_experiment, small_feed: None
) -> None:
    run_id = _running_run(engine, fast_settings, make_experiment)
    hub = EventHub(engine, "")

    async def scenario() -> None:
        one, two = hub.follow(run_id), hub.follow(run_id)
        assert (await anext(one)).kind == "status"
        assert (await anext(two)).kind == "status"
        [feed] = hub.feeds(run_id)
        await one.aclose()
        assert hub.feeds(run_id) == [feed] and not feed.finished
        await two.aclose()
        assert hub.feeds(run_id) == []
        await feed.wait_stopped()
        assert feed.closed and not feed.done
        again = hub.follow(run_id, 0)  # a new follower starts a new feed
        assert (await anext(again)).kind == "status"
        assert hub.feeds(run_id) != [feed]
        await again.aclose()

    asyncio.run(scenario())
    assert hub.feeds_started == 2

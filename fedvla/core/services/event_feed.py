"""Live run events: one reader per run and process, shared by everyone following the run.

Each follower of ``GET /runs/{id}/events`` once polled the table on its own, with a Redis
connection of its own: 200 followers exhausted the database pool. Now the first follower of a
run starts a ``RunFeed``: one asyncio task that reads the run's new events from the table (woken
by the run's Redis channel when Redis is configured, else every ``POLL_INTERVAL_S``) into a
bounded buffer, and wakes the followers, which take their events from that buffer. A follower
that starts further back than the feed (an old ``Last-Event-ID``), or falls behind its buffer,
reads the table itself from its last id until it reaches the buffer.

The table stays the source of truth and event ids the order, so a client that reconnects with
the last id it saw gets each event exactly once. A feed ends when its run is final and every
event was read, or when its last follower leaves. Its task, condition and Redis connection
belong to the event loop that started it, so feeds are kept per loop (Starlette's TestClient
may serve requests on several).
"""

import asyncio
import contextlib
import logging
import threading
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from anyio import to_thread
from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.models import RunEvent
from fedvla.core.services.events import channel, events_after
from fedvla.core.services.runs import run_events

log = logging.getLogger(__name__)

FOLLOW_PAGE = 200
"""Events read per query while following a run."""
POLL_INTERVAL_S = 0.25
"""Without Redis (or between its messages), how often a feed reads the event table."""
BUFFER_EVENTS = 1000
"""Newest events a feed keeps for its followers; one further behind reads the table."""
CREDENTIAL_CHECK_S = 2.0
"""How often an open stream asks again whether its caller may still read it (while_permitted)."""


class FeedStopped(RuntimeError):
    """The app shuts down while a stream follows a run; the client may reconnect later."""


class RunFeed:
    """The events of one run, read once for all its followers on one event loop.

    The buffer holds every event of the run with ``base < id <= head``, in id order.
    """

    def __init__(self, hub: "EventHub", run_id: int, start_id: int) -> None:
        self.hub = hub
        self.run_id = run_id
        self.loop = asyncio.get_running_loop()
        self.base = start_id
        self.head = start_id
        self.done = False
        """The run is final and every event it wrote is in the buffer (or before it)."""
        self.error: Exception | None = None
        self.closed = False
        """The task ended: done, failed, or stopped."""
        self.followers = 0
        self._ids: list[int] = []
        self._events: list[RunEvent] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read_loop(), name=f"fedvla-feed-run-{run_id}")

    @property
    def finished(self) -> bool:
        return self._task.done()

    def stop(self) -> None:
        self._task.cancel()

    async def wait_stopped(self) -> None:
        try:
            await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():  # the waiter itself was cancelled
                raise

    async def _read_loop(self) -> None:
        subscription: PubSub | None = None
        try:
            subscription = await _subscribe(self.hub.redis_url, self.run_id)
            while True:
                events, done = await to_thread.run_sync(self.hub.read, self.run_id, self.head)
                self._append(events)
                self.done = done
                if done:
                    return
                if events:
                    await self._notify()
                if len(events) < FOLLOW_PAGE:
                    await _wait_for_news(subscription)
        except Exception as error:  # followers see it and end their streams; they may reconnect
            log.exception("reading the events of run %s failed", self.run_id)
            self.error = error
        finally:
            self.closed = True
            self.hub.forget(self)
            await self._notify()
            if subscription is not None:
                await subscription.aclose()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _append(self, events: Sequence[RunEvent]) -> None:
        for event in events:
            assert event.id is not None
            self._ids.append(event.id)
            self._events.append(event)
            self.head = event.id
        excess = len(self._ids) - BUFFER_EVENTS
        if excess > BUFFER_EVENTS // 4:  # trim in batches, not on every event
            self.base = self._ids[excess - 1]
            del self._ids[:excess], self._events[:excess]

    def _buffered_after(self, last: int) -> list[RunEvent]:
        return self._events[bisect_right(self._ids, last) :]

    async def follow(self, after_id: int) -> AsyncIterator[RunEvent]:
        """Every event of the run after ``after_id``, until the feed is done (or failed)."""
        last = after_id
        while True:
            if last < self.base:  # further back than the buffer: read the table up to it
                base = self.base
                events = await to_thread.run_sync(self.hub.read_page, self.run_id, last)
                for event in events:
                    assert event.id is not None
                    last = event.id
                    yield event
                if len(events) < FOLLOW_PAGE:
                    last = max(last, base)  # every event up to base was committed before
                continue
            fresh = self._buffered_after(last)
            if fresh:
                for event in fresh:
                    assert event.id is not None
                    last = event.id
                    yield event
                continue
            if self.done:
                return
            if self.error is not None:
                raise self.error
            if self.closed:
                raise FeedStopped(f"the event feed of run {self.run_id} stopped")
            await self._wait_past(last)

    async def _wait_past(self, last: int) -> None:
        """Until the feed has read an event after ``last``, or ended."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.head > last or self.closed)


class EventHub:
    """The running feeds of a web app, one per event loop and run; kept on ``app.state``."""

    def __init__(self, engine: Engine, redis_url: str) -> None:
        self.engine = engine
        self.redis_url = redis_url
        self._feeds: dict[tuple[asyncio.AbstractEventLoop, int], RunFeed] = {}
        self._lock = threading.Lock()
        self.feeds_started = 0

    def read(self, run_id: int, after_id: int) -> tuple[Sequence[RunEvent], bool]:
        """A feed's read: the next page, and whether the run is final with nothing after it."""
        with Session(self.engine, expire_on_commit=False) as session:
            return run_events(session, run_id, after_id, FOLLOW_PAGE)

    def read_page(self, run_id: int, after_id: int) -> Sequence[RunEvent]:
        """A follower's read of its backlog, behind the feed's buffer."""
        with Session(self.engine, expire_on_commit=False) as session:
            return events_after(session, run_id, after_id, FOLLOW_PAGE)

    def feeds(self, run_id: int) -> list[RunFeed]:
        """The run's running feeds (one per event loop that serves followers of it)."""
        with self._lock:
            return [feed for (_, run), feed in self._feeds.items() if run == run_id]

    async def follow(self, run_id: int, after_id: int = 0) -> AsyncIterator[RunEvent]:
        """Every event of the run after ``after_id``, live, until the run is final and all were
        sent; the caller then sends the end of the stream."""
        feed = self._join(run_id, after_id)
        try:
            async for event in feed.follow(after_id):
                yield event
        finally:
            self._leave(feed)

    def _join(self, run_id: int, after_id: int) -> RunFeed:
        key = (asyncio.get_running_loop(), run_id)
        with self._lock:
            feed = self._feeds.get(key)
            if feed is None or feed.finished:
                feed = self._feeds[key] = RunFeed(self, run_id, after_id)
                self.feeds_started += 1
            feed.followers += 1
            return feed

    def _leave(self, feed: RunFeed) -> None:
        with self._lock:
            feed.followers -= 1
            if feed.followers > 0:
                return
            self._forget(feed)
        feed.stop()

    def forget(self, feed: RunFeed) -> None:
        """A feed that ended: the next follower of its run starts a new one."""
        with self._lock:
            self._forget(feed)

    def _forget(self, feed: RunFeed) -> None:
        key = (feed.loop, feed.run_id)
        if self._feeds.get(key) is feed:
            del self._feeds[key]

    async def aclose(self) -> None:
        """Stops the feeds of the running loop (the app shuts down)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            feeds = [feed for (owner, _), feed in self._feeds.items() if owner is loop]
        for feed in feeds:
            feed.stop()
        for feed in feeds:
            await feed.wait_stopped()


async def _subscribe(redis_url: str, run_id: int) -> PubSub | None:
    """The run's Redis channel, subscribed; None without Redis (or when it is down: poll)."""
    if not redis_url:
        return None
    # The PubSub owns its connection and closes it with aclose(); no shared pool is left behind.
    subscription = aioredis.Redis.from_url(redis_url).pubsub()
    try:
        await subscription.subscribe(channel(run_id))
    except BaseException as error:  # down, or the feed stopped while subscribing
        await subscription.aclose()
        if isinstance(error, RedisError | OSError):
            return None
        raise
    return subscription


async def _wait_for_news(subscription: PubSub | None) -> None:
    """Until an event is published on the run's channel, or a poll interval passed."""
    if subscription is None:
        await asyncio.sleep(POLL_INTERVAL_S)
        return
    try:
        message = await subscription.get_message(
            ignore_subscribe_messages=True, timeout=POLL_INTERVAL_S * 2
        )
        while message is not None:  # drain: one read of the table covers them all
            message = await subscription.get_message(ignore_subscribe_messages=True, timeout=0)
    except RedisError:
        await asyncio.sleep(POLL_INTERVAL_S)


async def while_permitted[T](
    items: AsyncIterator[T],
    permitted: Callable[[], Awaitable[bool]],
    interval_s: float = CREDENTIAL_CHECK_S,
) -> AsyncIterator[T]:
    """The items of ``items`` until ``permitted()`` answers False, asked every ``interval_s``
    whether items arrive or not: a stream whose token was revoked, or whose dashboard session
    ended, closes within that time instead of following the run to its end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + interval_s
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending}, timeout=max(deadline - loop.time(), 0))
            if done:
                finished, pending = pending, None
                try:
                    item = finished.result()
                except StopAsyncIteration:
                    return
                yield item
            if loop.time() >= deadline:
                if not await permitted():
                    return
                deadline = loop.time() + interval_s
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()

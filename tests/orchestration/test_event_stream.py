"""The live event stream over a real HTTP server: followed as it is written, resumed with
Last-Event-ID after a disconnect with nothing lost or repeated; with Redis fan-out and without."""

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
import redis
import sqlalchemy
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import RunStatus
from fedvla.core.services import event_feed, runs
from fedvla.core.services.events import EventPublisher, channel, events_after
from fedvla.orchestration.db_reporter import DbReporter
from fedvla.orchestration.dispatch import run_sender
from tests.conftest import REDIS_URL, _unavailable
from tests.orchestration.conftest import LiveServer, read_sse

NO_REDIS = EventPublisher("")


@pytest.fixture(params=["table", pytest.param("redis", marks=pytest.mark.redis)])
def events_settings(request: pytest.FixtureRequest, fast_settings: Settings) -> Settings:
    if request.param == "table":
        return fast_settings
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as error:
        _unavailable("Redis", error)
    return fast_settings.model_copy(update={"redis_url": REDIS_URL})


def _running_run(engine: Engine, make_experiment, settings: Settings) -> int:
    experiment = make_experiment()
    with Session(engine) as session:
        run = runs.launch_run(
            session, run_sender(settings), NO_REDIS, experiment_id=experiment.id, actor="tests"
        )
        assert run.id is not None
        run_id = run.id
        assert runs.claim_run(session, NO_REDIS, run_id, "test-worker")
    return run_id


def _lines(response: httpx.Response) -> Iterator[str]:
    return response.iter_lines()


def test_reconnecting_with_last_event_id_loses_and_repeats_nothing(
    engine: Engine, events_settings: Settings, make_experiment, admin: dict[str, str]
) -> None:
    settings = events_settings
    run_id = _running_run(engine, make_experiment, settings)
    reporter = DbReporter(settings.database_url, settings.redis_url, run_id)
    first_read = threading.Event()
    disconnected = threading.Event()

    def federation() -> None:
        for index in range(5):
            reporter.log(f"line {index}")
        first_read.wait(30)
        for index in range(5, 10):  # written while the client is connected and waiting
            reporter.log(f"line {index}")
        disconnected.wait(30)
        for index in range(10, 20):  # written while nobody listens
            reporter.log(f"line {index}")
        with Session(engine) as session:
            runs.finish_run(
                session, EventPublisher(settings.redis_url), run_id, RunStatus.succeeded
            )

    writer = threading.Thread(target=federation)
    url = f"/api/v1/runs/{run_id}/events"
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        writer.start()
        with http.stream("GET", url, headers=admin) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = _lines(response)
            before = read_sse(lines, stop_after=7)  # queued, running, line 0..4
            first_read.set()
            before += read_sse(lines, stop_after=5)  # line 5..9, followed live
        disconnected.set()
        writer.join(30)
        resumed_headers = {**admin, "Last-Event-ID": before[-1]["id"]}
        with http.stream("GET", url, headers=resumed_headers) as response:
            after = read_sse(_lines(response))
        with http.stream("GET", url, headers={**admin, "Last-Event-ID": after[-2]["id"]}) as again:
            nothing_new = read_sse(_lines(again))
    reporter.close()

    assert after[-1]["event"] == "end"
    received = [int(event["id"]) for event in before + after[:-1]]
    with Session(engine) as session:
        stored = [event.id for event in events_after(session, run_id, 0, 1000)]
    assert received == stored
    assert len(stored) == 23  # queued, running, 20 lines, succeeded
    messages = [json.loads(event["data"])["message"] for event in before + after[:-1]]
    assert messages[2:22] == [f"line {index}" for index in range(20)]
    assert [event["event"] for event in nothing_new] == ["end"]


def test_events_are_published_on_redis_when_configured(
    engine: Engine, fast_settings: Settings, make_experiment
) -> None:
    try:
        subscriber = redis.Redis.from_url(REDIS_URL).pubsub()
        settings = fast_settings.model_copy(update={"redis_url": REDIS_URL})
    except redis.RedisError as error:  # pragma: no cover - depends on the machine
        _unavailable("Redis", error)
    run_id = _running_run(engine, make_experiment, settings)
    subscriber.subscribe(channel(run_id))
    assert subscriber.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    reporter = DbReporter(settings.database_url, settings.redis_url, run_id)

    reporter.log("hello")
    reporter.checkpoint_removed(3)
    reporter.close()

    published = []
    while len(published) < 2 and (message := subscriber.get_message(timeout=5)) is not None:
        published.append(json.loads(message["data"]))
    subscriber.close()
    with Session(engine) as session:
        stored = list(events_after(session, run_id, 0, 100))[-2:]
    assert [p["id"] for p in published] == [event.id for event in stored]
    assert [(p["kind"], p["message"]) for p in published] == [
        ("log", "hello"),
        ("checkpoint", "checkpoint of round 3 removed (retention)"),
    ]


def test_a_stream_needs_a_token_and_a_known_run(
    engine: Engine, fast_settings: Settings, make_experiment, admin: dict[str, str]
) -> None:
    with LiveServer(fast_settings) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/api/v1/runs/1/events").status_code == 401
        missing = http.get("/api/v1/runs/999/events", headers=admin)
    assert (missing.status_code, missing.json()["detail"]) == (404, "Run not found")


def test_many_open_streams_do_not_starve_each_other_or_other_requests(
    engine: Engine, fast_settings: Settings, make_experiment, admin: dict[str, str]
) -> None:
    """Each open stream once held a pooled connection for its whole life: 15 stalled the app."""
    settings = fast_settings
    run_id = _running_run(engine, make_experiment, settings)
    streams = 20  # more than the pool's 5 connections + 10 overflow
    url = f"/api/v1/runs/{run_id}/events"
    with LiveServer(settings) as server, ExitStack() as stack:
        responses = [
            stack.enter_context(
                stack.enter_context(httpx.Client(base_url=server.url, timeout=10)).stream(
                    "GET", url, headers=admin
                )
            )
            for _ in range(streams)
        ]
        # Every stream delivers the run's first events while all the others stay open.
        for response in responses:
            assert response.status_code == 200
            events = read_sse(_lines(response), stop_after=2)
            assert [event["event"] for event in events] == ["status", "status"]
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get(f"/api/v1/runs/{run_id}", headers=admin).status_code == 200


def test_many_followers_share_one_reader_and_each_get_every_event_once(
    engine: Engine,
    events_settings: Settings,
    make_experiment,
    admin: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each follower once polled the table on its own (with its own Redis connection): 200 of
    them ran the pool dry. Now one feed reads the run for all the followers of the process."""
    # A slow poll keeps the one reader's count of reads far below the followers' on a slow
    # machine too (the server runs in this process).
    monkeypatch.setattr(event_feed, "POLL_INTERVAL_S", 1.0)
    settings = events_settings
    run_id = _running_run(engine, make_experiment, settings)
    followers = 60  # more than the pool (5 + 10) and the threadpool (40) together
    url = f"/api/v1/runs/{run_id}/events"
    following = threading.Barrier(followers + 1, timeout=60)
    reads: list[str] = []  # queries of the event table by the server

    def count_reads(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM runevent" in statement:
            reads.append(statement)

    def follow() -> list[dict[str, str]]:
        with (
            httpx.Client(base_url=server.url, timeout=60) as http,
            http.stream("GET", url, headers=admin) as response,
        ):
            assert response.status_code == 200
            lines = _lines(response)
            received = read_sse(lines, stop_after=2)  # queued, running
            following.wait()
            return received + read_sse(lines)

    with LiveServer(settings) as server, ThreadPoolExecutor(followers) as pool:
        sqlalchemy.event.listen(server.app.state.engine, "before_cursor_execute", count_reads)
        streams = [pool.submit(follow) for _ in range(followers)]
        following.wait()  # every follower is connected and has its backlog
        reporter = DbReporter(settings.database_url, settings.redis_url, run_id)
        for index in range(10):
            reporter.log(f"line {index}")
        reporter.close()
        with Session(engine) as session:
            runs.finish_run(
                session, EventPublisher(settings.redis_url), run_id, RunStatus.succeeded
            )
        received = [stream.result(timeout=60) for stream in streams]
        hub = server.app.state.event_hub
        sqlalchemy.event.remove(server.app.state.engine, "before_cursor_execute", count_reads)

    with Session(engine) as session:
        stored = [str(event.id) for event in events_after(session, run_id, 0, 1000)]
    assert len(stored) == 13  # queued, running, 10 lines, succeeded
    for events in received:
        assert [event.get("id") for event in events[:-1]] == stored
        assert events[-1]["event"] == "end"
    assert hub.feeds_started == 1
    assert hub.feeds(run_id) == []  # the feed ended with the run
    # One reader polls (every 0.5 s, or when Redis wakes it); a reader per follower would have
    # read the table at least twice each.
    assert len(reads) < followers

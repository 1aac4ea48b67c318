"""The live event stream over a real HTTP server: followed as it is written, resumed with
Last-Event-ID after a disconnect with nothing lost or repeated; with Redis fan-out and without."""

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.core.config import Settings
from app.models import RunStatus
from app.services import runs
from app.services.events import EventPublisher, channel, events_after
from tests.conftest import REDIS_URL, _unavailable
from tests.orchestration.conftest import LiveServer, read_sse
from worker.db_reporter import DbReporter

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
            session, settings, NO_REDIS, experiment_id=experiment.id, actor="tests"
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

"""An open event stream ends when its credential does: a revoked token, a signed-out dashboard
session. Over a real HTTP server, with the run still going (so only the credential can end it).
Non-admin streams carry no server paths."""

import json
import threading
import time
from collections.abc import Iterator

import httpx
from bs4 import BeautifulSoup
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from fedvla.core.config import Settings
from fedvla.core.models import ApiToken, Role
from fedvla.core.security import hash_token
from fedvla.core.services import event_feed, runs
from fedvla.core.services import tokens as token_service
from fedvla.core.services.events import EventPublisher
from fedvla.engine.federation.reporter import CheckpointReport
from fedvla.orchestration.db_reporter import DbReporter
from tests.orchestration.conftest import LiveServer, read_sse
from tests.orchestration.test_event_stream import _running_run

NO_REDIS = EventPublisher("")  # finishes the run in the path test
CLOSE_BOUND_S = event_feed.CREDENTIAL_CHECK_S + 8.0
"""The check interval, plus room for a loaded 2-CPU machine."""


def _seconds_until_closed(lines: Iterator[str]) -> tuple[float, list[dict[str, str]]]:
    """Reads the stream to its end: how long that took, and the events that came."""
    started = time.monotonic()
    events = read_sse(lines)
    return time.monotonic() - started, events


def _keep_logging(reporter: DbReporter, stop: threading.Event) -> threading.Thread:
    """The run keeps writing events, so a stream that ends was ended by its credential."""

    def write() -> None:
        while not stop.wait(0.5):
            reporter.log("still training")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_revoking_a_token_closes_its_open_stream(
    engine: Engine, fast_settings: Settings, make_experiment, session: Session, bearer
) -> None:
    run_id = _running_run(engine, make_experiment, fast_settings)
    viewer = bearer(Role.viewer)
    secret = viewer["Authorization"].removeprefix("Bearer ")
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    stop = threading.Event()
    writer = _keep_logging(reporter, stop)
    try:
        with (
            LiveServer(fast_settings) as server,
            httpx.Client(base_url=server.url, timeout=60) as http,
            http.stream("GET", f"/api/v1/runs/{run_id}/events", headers=viewer) as response,
        ):
            assert response.status_code == 200
            lines = response.iter_lines()
            assert len(read_sse(lines, stop_after=3)) == 3  # queued, running, a log line
            token = session.exec(
                select(ApiToken).where(ApiToken.token_hash == hash_token(secret))
            ).one()
            token_service.revoke_token(session=session, token=token)
            elapsed, after = _seconds_until_closed(lines)
            reconnect = http.get(f"/api/v1/runs/{run_id}/events", headers=viewer)
    finally:
        stop.set()
        writer.join(10)
        reporter.close()

    assert elapsed < CLOSE_BOUND_S, f"the stream stayed open {elapsed:.1f} s after revocation"
    assert all(event.get("event") != "end" for event in after)  # the run did not end
    assert reconnect.status_code == 401


def _signed_in(http: httpx.Client, secret: str) -> str:
    """Signs the client in through the form; returns the CSRF token of its session."""
    form = BeautifulSoup(http.get("/signin").text, "html.parser")
    field = form.find("input", attrs={"name": "csrf_token"})
    assert field is not None
    response = http.post("/signin", data={"token": secret, "csrf_token": field["value"]})
    assert response.status_code == 303, response.text
    page = BeautifulSoup(http.get("/experiments").text, "html.parser")
    csrf = page.find("input", attrs={"name": "csrf_token"})
    assert csrf is not None
    return str(csrf["value"])


def test_signing_out_closes_the_dashboards_stream_and_the_copied_cookie_is_dead(
    engine: Engine, fast_settings: Settings, make_experiment, bearer
) -> None:
    run_id = _running_run(engine, make_experiment, fast_settings)
    secret = bearer(Role.viewer)["Authorization"].removeprefix("Bearer ")
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    stop = threading.Event()
    writer = _keep_logging(reporter, stop)
    url = f"/api/v1/runs/{run_id}/events"
    try:
        with (
            LiveServer(fast_settings) as server,
            httpx.Client(base_url=server.url, timeout=60) as browser,
        ):
            csrf = _signed_in(browser, secret)
            copied = dict(browser.cookies)
            with browser.stream("GET", url) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert len(read_sse(lines, stop_after=3)) == 3
                signed_out = browser.post("/signout", data={"csrf_token": csrf})
                assert signed_out.status_code == 303
                elapsed, after = _seconds_until_closed(lines)
            with httpx.Client(base_url=server.url, cookies=copied, timeout=30) as thief:
                page = thief.get("/tokens")
                api = thief.get("/api/v1/experiments")
                stream = thief.get(url)
    finally:
        stop.set()
        writer.join(10)
        reporter.close()

    assert elapsed < CLOSE_BOUND_S, f"the stream stayed open {elapsed:.1f} s after sign-out"
    assert all(event.get("event") != "end" for event in after)
    assert page.status_code == 303 and "/signin" in page.headers["location"]
    assert api.status_code == 401
    assert stream.status_code == 401


def test_a_viewers_stream_hides_checkpoint_paths_an_admins_shows_them(
    engine: Engine, fast_settings: Settings, make_experiment, bearer
) -> None:
    run_id = _running_run(engine, make_experiment, fast_settings)
    folder = str(fast_settings.data_dir.resolve() / "runs" / str(run_id) / "pretrained_model")
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    reporter.checkpoint_saved(CheckpointReport(1, folder, "ab" * 32, 10, None))
    reporter.log(f"[Errno 2] No such file or directory: '{folder}/model.safetensors'")
    with Session(engine) as session:
        runs.finish_run(session, NO_REDIS, run_id, runs.RunStatus.succeeded)
    reporter.close()

    seen: dict[Role, str] = {}
    with LiveServer(fast_settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for role in (Role.viewer, Role.admin):
            with http.stream(
                "GET", f"/api/v1/runs/{run_id}/events", headers=bearer(role)
            ) as response:
                events = read_sse(response.iter_lines())
            seen[role] = json.dumps([json.loads(event["data"]) for event in events])

    assert folder not in seen[Role.viewer] and "<server path>" in seen[Role.viewer]
    assert folder in seen[Role.admin]

"""The runs API: launch (queued on the real embedded broker), refusals, listing, cancel, resume
points, metrics and event pages, and the reaper, on SQLite and PostgreSQL."""

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from fedvla.core.config import Settings
from fedvla.core.models import Role, Run, RunEvent, RunStatus, SiteStatus, utcnow
from fedvla.core.services import run_files, runs
from fedvla.core.services import sites as site_service
from fedvla.core.services.events import EventPublisher
from fedvla.engine.federation.reporter import CheckpointReport, ClientReport, RoundReport
from fedvla.orchestration.db_reporter import DbReporter
from fedvla.orchestration.registry import HeartbeatThread, register_worker
from fedvla.web.main import create_app
from tests.factories import deployment_body, make_site
from tests.factories import make_experiment as make_experiment_from_body

NO_REDIS = EventPublisher("")


def _count(session: Session, table: type) -> int:
    return session.exec(select(func.count()).select_from(table)).one()


def test_launch_freezes_the_experiment_and_queues_it(
    client: TestClient, session: Session, admin: dict[str, str], make_experiment
) -> None:
    experiment = make_experiment(num_rounds=4)

    answer = client.post(f"/api/v1/experiments/{experiment.id}/runs", headers=admin)

    assert answer.status_code == 202, answer.text
    run = answer.json()
    assert run["status"] == "queued"
    assert run["config"]["num_rounds"] == 4
    assert run["config"]["policy"] == "tiny"
    # Editing the experiment afterwards leaves what was launched untouched.
    patched = client.patch(
        f"/api/v1/experiments/{experiment.id}", headers=admin, json={"num_rounds": 9}
    )
    assert patched.status_code == 200, patched.text
    again = client.get(f"/api/v1/runs/{run['id']}", headers=admin).json()
    assert again["config"]["num_rounds"] == 4
    stored = session.get(Run, run["id"])
    assert stored is not None and stored.task_id
    events = client.get(f"/api/v1/runs/{run['id']}/events.json", headers=admin).json()
    assert [e["message"] for e in events["data"]] == [f"queued by {_name(session, admin)}"]


def _name(session: Session, headers: dict[str, str]) -> str:
    from fedvla.core.services.tokens import authenticate

    token = authenticate(session=session, secret=headers["Authorization"].split()[1])
    assert token is not None
    return token.name


def test_launch_by_body_and_roles(
    client: TestClient,
    admin: dict[str, str],
    viewer: dict[str, str],
    make_experiment,
) -> None:
    experiment = make_experiment()
    body = {"experiment_id": experiment.id}

    assert client.post("/api/v1/runs", json=body).status_code == 401
    assert client.post("/api/v1/runs", json=body, headers=viewer).status_code == 403
    answer = client.post("/api/v1/runs", json=body, headers=admin)
    assert answer.status_code == 202, answer.text
    missing = client.post("/api/v1/runs", json={"experiment_id": 999}, headers=admin)
    assert (missing.status_code, missing.json()["detail"]) == (404, "Experiment not found")
    unknown_field = client.post("/api/v1/runs", json={**body, "rounds": 3}, headers=admin)
    assert unknown_field.status_code == 422


@pytest.mark.parametrize(
    "broker_url",
    ["redis://127.0.0.1:1/0", "sqla+sqlite:////nonexistent/directory/broker.db"],
    ids=["redis-down", "embedded-unwritable"],
)
def test_a_broker_that_is_down_answers_503_and_creates_no_run(
    fast_settings: Settings,
    session: Session,
    admin: dict[str, str],
    make_experiment,
    broker_url: str,
) -> None:
    experiment = make_experiment()
    settings = fast_settings.model_copy(update={"broker_url": broker_url})
    with TestClient(create_app(settings)) as client:
        answer = client.post(f"/api/v1/experiments/{experiment.id}/runs", headers=admin)

    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["detail"] == (
        "The task broker is unreachable; the run was not created. Try again later."
    )
    assert body["errors"][0]["field"] == "broker"
    assert _count(session, Run) == 0
    assert _count(session, RunEvent) == 0


def test_the_embedded_broker_makes_its_data_dir_when_the_database_is_elsewhere(
    fast_settings: Settings, admin: dict[str, str], make_experiment, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh" / "var"  # a new machine: nothing has made the data dir yet
    settings = fast_settings.model_copy(update={"data_dir": fresh})
    settings = settings.model_copy(update={"broker_url": settings.embedded_broker_url})
    experiment = make_experiment()
    with TestClient(create_app(settings)) as client:
        answer = client.post(f"/api/v1/experiments/{experiment.id}/runs", headers=admin)

    assert answer.status_code == 202, answer.text
    assert (fresh / "broker.db").is_file()


def test_deployment_with_unapproved_or_mismatched_sites_is_refused(
    client: TestClient, session: Session, admin: dict[str, str]
) -> None:
    approved = make_site(session)
    site_service.set_status(
        session=session, site=approved, status=SiteStatus.approved, actor="t", reason=""
    )
    pending = make_site(
        session,
        features={"state_dim": 7, "action_dim": 6, "fps": 30, "camera_keys": ["top"]},
    )
    assert approved.id is not None and pending.id is not None
    experiment = make_experiment_from_body(session, deployment_body([approved.id, pending.id]))

    answer = client.post(f"/api/v1/experiments/{experiment.id}/runs", headers=admin)

    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body["detail"] == "The experiment's sites cannot run together"
    reasons = {problem["field"]: problem["reason"] for problem in body["errors"]}
    assert reasons["sites"] == f"site {pending.name!r} (id {pending.id}) is pending"
    assert reasons[f"sites.{pending.id}.features.state_dim"] == (
        f"site {pending.name!r}: state has 7 dimensions, the experiment's has 6; "
        "fix: record states with the experiment's 6 joints"
    )
    assert _count(session, Run) == 0


def test_list_filters_and_pages(
    client: TestClient, session: Session, admin: dict[str, str], make_experiment
) -> None:
    first, second = make_experiment(), make_experiment()
    ids = [
        client.post(f"/api/v1/experiments/{exp.id}/runs", headers=admin).json()["id"]
        for exp in (first, second, second)
    ]
    client.post(f"/api/v1/runs/{ids[2]}/cancel", headers=admin)

    everything = client.get("/api/v1/runs", headers=admin).json()
    assert [r["id"] for r in everything["data"]] == ids[::-1]
    assert everything["count"] == 3
    page = client.get("/api/v1/runs?limit=1&offset=1", headers=admin).json()
    assert ([r["id"] for r in page["data"]], page["count"]) == ([ids[1]], 3)
    of_second = client.get(f"/api/v1/runs?experiment_id={second.id}", headers=admin).json()
    assert [r["id"] for r in of_second["data"]] == [ids[2], ids[1]]
    cancelled = client.get("/api/v1/runs?status=cancelled", headers=admin).json()
    assert [r["id"] for r in cancelled["data"]] == [ids[2]]
    bad = client.get("/api/v1/runs?status=paused", headers=admin)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "status"


def test_operators_see_runs_of_their_experiments_only(
    client: TestClient, session: Session, admin: dict[str, str], bearer
) -> None:
    own, other = make_site(session), make_site(session)
    for site in (own, other):
        site_service.set_status(
            session=session, site=site, status=SiteStatus.approved, actor="t", reason=""
        )
    assert own.id is not None and other.id is not None
    mine = make_experiment_from_body(session, deployment_body([own.id]))
    theirs = make_experiment_from_body(session, deployment_body([other.id]))
    mine_run = client.post(f"/api/v1/experiments/{mine.id}/runs", headers=admin).json()
    theirs_run = client.post(f"/api/v1/experiments/{theirs.id}/runs", headers=admin).json()
    operator = bearer(Role.operator, own.id)

    listed = client.get("/api/v1/runs", headers=operator).json()
    assert [r["id"] for r in listed["data"]] == [mine_run["id"]]
    assert client.get(f"/api/v1/runs/{mine_run['id']}", headers=operator).status_code == 200
    assert client.get(f"/api/v1/runs/{theirs_run['id']}", headers=operator).status_code == 403
    assert (
        client.get(f"/api/v1/runs/{theirs_run['id']}/events.json", headers=operator).status_code
        == 403
    )
    assert client.post(f"/api/v1/runs/{mine_run['id']}/cancel", headers=operator).status_code == 403
    assert mine_run["config"]["site_ids"] == [own.id]


def test_cancel_and_cancelling_a_finished_run(
    client: TestClient, admin: dict[str, str], viewer: dict[str, str], make_experiment
) -> None:
    run = client.post(f"/api/v1/experiments/{make_experiment().id}/runs", headers=admin).json()

    assert client.post(f"/api/v1/runs/{run['id']}/cancel", headers=viewer).status_code == 403
    cancelled = client.post(f"/api/v1/runs/{run['id']}/cancel", headers=admin)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = client.post(f"/api/v1/runs/{run['id']}/cancel", headers=admin)
    assert again.status_code == 409
    assert again.json()["detail"] == f"Run {run['id']} already finished (cancelled)"
    assert again.json()["errors"] == [{"field": "status", "reason": "already cancelled"}]
    assert client.post("/api/v1/runs/999/cancel", headers=admin).status_code == 404


def _claimed_run(client: TestClient, engine: Engine, admin: dict[str, str], experiment) -> int:
    run_id: int = client.post(f"/api/v1/experiments/{experiment.id}/runs", headers=admin).json()[
        "id"
    ]
    with Session(engine) as session:
        assert runs.claim_run(session, NO_REDIS, run_id, "test-worker")
    return run_id


def _report_round(reporter: DbReporter, round: int) -> None:
    reporter.round_finished(
        RoundReport(
            round=round,
            train_loss=1.0 / (round + 1),
            eval_loss=2.0 / (round + 1),
            duration_s=1.5,
            bytes_sent=1000,
            bytes_received=900,
            clients_sampled=2,
            clients_succeeded=2,
            clients_failed=0,
            clients=[
                ClientReport(client=f"client-{i}", site_id=None, ok=True, train_loss=0.5, samples=8)
                for i in range(2)
            ],
        )
    )


def test_reported_rounds_clients_and_events_are_served(
    client: TestClient,
    engine: Engine,
    fast_settings: Settings,
    admin: dict[str, str],
    viewer: dict[str, str],
    make_experiment,
) -> None:
    run_id = _claimed_run(client, engine, admin, make_experiment())
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    reporter.log("building the tiny policy")
    _report_round(reporter, 0)
    _report_round(reporter, 1)
    reporter.close()

    rounds = client.get(f"/api/v1/runs/{run_id}/rounds", headers=viewer).json()
    assert [(r["round"], r["eval_loss"]) for r in rounds["data"]] == [(0, 2.0), (1, 1.0)]
    clients = client.get(f"/api/v1/runs/{run_id}/clients?round=1", headers=viewer).json()
    assert [(c["round"], c["client"]) for c in clients["data"]] == [
        (1, "client-0"),
        (1, "client-1"),
    ]
    assert client.get(f"/api/v1/runs/{run_id}", headers=viewer).json()["current_round"] == 1

    first = client.get(f"/api/v1/runs/{run_id}/events.json?limit=2", headers=viewer).json()
    assert [e["kind"] for e in first["data"]] == ["status", "status"]
    assert first["finished"] is False
    rest = client.get(
        f"/api/v1/runs/{run_id}/events.json?after_id={first['next_after_id']}", headers=viewer
    ).json()
    assert [e["kind"] for e in rest["data"]] == ["log", "round", "round"]
    assert (
        rest["data"][1]["message"]
        == "round 0, train loss 1.0000, server eval loss 2.0000, 2/2 clients"
    )
    assert rest["data"][2]["data"]["clients"][0]["client"] == "client-0"
    assert rest["finished"] is False  # still running


def test_resume_points_are_checked(
    client: TestClient,
    engine: Engine,
    fast_settings: Settings,
    admin: dict[str, str],
    make_experiment,
) -> None:
    experiment = make_experiment(num_rounds=3)
    source = _claimed_run(client, engine, admin, experiment)
    reporter = DbReporter(fast_settings.database_url, "", source)
    with Session(engine) as session:
        run_dir = run_files.run_dir_of(session, fast_settings, source)
    for round in (2, 3):
        folder = run_dir / f"round-{round}" / "pretrained_model"
        reporter.checkpoint_saved(CheckpointReport(round, str(folder), "ab" * 32, 10, 0.5))
    reporter.close()
    url = f"/api/v1/experiments/{experiment.id}/runs"

    final = client.post(url, headers=admin, json={"resume_from": {"run_id": source, "round": 3}})
    assert final.status_code == 409
    assert final.json()["errors"] == [
        {
            "field": "resume_from.round",
            "reason": "round 3 is the end of a 3-round experiment; fix: resume from an earlier "
            "round, or raise num_rounds",
        }
    ]

    no_round = client.post(url, headers=admin, json={"resume_from": {"run_id": source, "round": 1}})
    assert no_round.status_code == 409
    assert (
        no_round.json()["detail"]
        == f"Run {source} has no checkpoint of round 1 (kept rounds: [2, 3])"
    )
    assert no_round.json()["errors"] == [
        {
            "field": "resume_from.round",
            "reason": "no checkpoint of this round (kept rounds: [2, 3])",
        }
    ]
    no_run = client.post(url, headers=admin, json={"resume_from": {"run_id": 999, "round": 1}})
    assert (no_run.status_code, no_run.json()["detail"]) == (409, "Run 999 does not exist")
    assert no_run.json()["errors"] == [{"field": "resume_from.run_id", "reason": "no such run"}]
    other = make_experiment()
    elsewhere = client.post(
        f"/api/v1/experiments/{other.id}/runs",
        headers=admin,
        json={"resume_from": {"run_id": source, "round": 2}},
    )
    assert elsewhere.status_code == 409
    assert elsewhere.json()["errors"] == [
        {"field": "resume_from.run_id", "reason": f"a run of experiment {experiment.id}"}
    ]

    resumed = client.post(url, headers=admin, json={"resume_from": {"run_id": source, "round": 2}})

    assert resumed.status_code == 202, resumed.text
    body = resumed.json()
    assert (body["resumed_from_run_id"], body["resumed_from_round"]) == (source, 2)
    assert body["config"]["resume_from"] == {"checkpoint_dir": str(run_dir / "round-2"), "round": 2}


def test_a_lost_workers_run_is_failed_by_a_live_workers_heartbeat_not_by_reading_it(
    engine: Engine, fast_settings: Settings, admin: dict[str, str], make_experiment
) -> None:
    """Reads have no side effects (every read once ran the reaper's query): the heartbeat loop
    of any live worker, and the web app's background reaper, fail lost runs. This app is not
    started (no lifespan), so its background reaper stays out of the way."""
    client = TestClient(create_app(fast_settings))
    run_id = _claimed_run(client, engine, admin, make_experiment())
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    _report_round(reporter, 0)
    reporter.close()
    with Session(engine) as session:
        stale = utcnow() - timedelta(seconds=fast_settings.lost_after_s + 1)
        session.execute(update(Run).where(col(Run.id) == run_id).values(heartbeat_at=stale))
        session.commit()
    assert client.get(f"/api/v1/runs/{run_id}", headers=admin).json()["status"] == "running"
    register_worker(engine, fast_settings, "gpu@alive")

    assert HeartbeatThread(engine, fast_settings, "gpu@alive").beat() == [run_id]

    run = client.get(f"/api/v1/runs/{run_id}", headers=admin).json()
    assert run["status"] == "failed"
    assert run["error"] == f"worker lost: no heartbeat for {fast_settings.lost_after_s:.0f} s"
    assert run["finished_at"] is not None
    rounds = client.get(f"/api/v1/runs/{run_id}/rounds", headers=admin).json()
    assert rounds["count"] == 1  # what was done stays
    with Session(engine) as session:
        assert not runs.finish_run(session, NO_REDIS, run_id, RunStatus.succeeded)


def test_claim_is_exclusive_and_refuses_cancelled_runs(
    client: TestClient, engine: Engine, admin: dict[str, str], make_experiment
) -> None:
    experiment = make_experiment()
    first = client.post(f"/api/v1/experiments/{experiment.id}/runs", headers=admin).json()["id"]
    second = client.post(f"/api/v1/experiments/{experiment.id}/runs", headers=admin).json()["id"]
    client.post(f"/api/v1/runs/{second}/cancel", headers=admin)

    with Session(engine) as session:
        assert runs.claim_run(session, NO_REDIS, first, "worker-a")
        assert not runs.claim_run(session, NO_REDIS, first, "worker-b")
        assert not runs.claim_run(session, NO_REDIS, second, "worker-a")
        with pytest.raises(runs.RunMissing):
            runs.claim_run(session, NO_REDIS, 999, "worker-a")
        run = session.get(Run, first)
        assert run is not None and run.worker == "worker-a"

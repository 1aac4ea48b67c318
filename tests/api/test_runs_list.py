"""The runs list (search, filters, sorting by duration and final loss, pages), notes on runs,
CSV and JSON exports of rounds and clients, and the run's log: each with its role rules."""

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import (
    MAX_RUN_NOTES_LENGTH,
    utcnow,
)
from fedvla.core.services import run_files
from tests.api.conftest import World
from tests.factories import (
    bearer,
    deployment_body,
    make_experiment,
    run_rounds,
    simulation_body,
)
from tests.factories import (
    launch_quietly as launch,
)

API = "/api/v1"


@pytest.fixture
def three_runs(session: Session, settings: Settings) -> dict[str, int]:
    """alpha: eval loss 0.5 in 30 s; beta: train loss only (0.2) in 90 s; gamma: queued."""
    alpha = make_experiment(session, simulation_body(name="alpha-pick", num_rounds=2))
    beta = make_experiment(session, simulation_body(name="beta-place", num_rounds=2))
    assert alpha.id is not None and beta.id is not None
    a = launch(session, settings, alpha.id)
    b = launch(session, settings, beta.id)
    c = launch(session, settings, alpha.id)
    run_rounds(session, settings, a, [(0.9, 1.0), (0.5, 0.7)], seconds=30)
    run_rounds(session, settings, b, [(None, 0.4), (None, 0.2)], seconds=90)
    assert a.id is not None and b.id is not None and c.id is not None
    return {"alpha": a.id, "beta": b.id, "gamma": c.id, "alpha_experiment": alpha.id}


def ids(client: TestClient, secret: str, query: str) -> list[int]:
    response = client.get(f"{API}/runs?{query}", headers=bearer(secret))
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["data"]]


def test_sorts_by_final_loss_and_duration_with_runs_not_started_last(
    client: TestClient, world: World, three_runs: dict[str, int]
) -> None:
    viewer = world.secrets["viewer"] or ""
    a, b, c = three_runs["alpha"], three_runs["beta"], three_runs["gamma"]

    assert ids(client, viewer, "sort=final_loss&order=asc") == [b, a, c]
    assert ids(client, viewer, "sort=final_loss&order=desc") == [a, b, c]
    assert ids(client, viewer, "sort=duration&order=asc") == [a, b, c]
    assert ids(client, viewer, "sort=duration&order=desc") == [b, a, c]
    assert ids(client, viewer, "sort=experiment&order=asc") == [a, c, b]  # ties by id
    assert ids(client, viewer, "") == [c, b, a]  # newest first

    rows = {
        row["id"]: row for row in client.get(f"{API}/runs", headers=bearer(viewer)).json()["data"]
    }
    assert rows[a]["final_loss"] == pytest.approx(0.5) and rows[a]["final_loss_source"] == "eval"
    assert rows[b]["final_loss"] == pytest.approx(0.2) and rows[b]["final_loss_source"] == "train"
    assert rows[c]["final_loss"] is None and rows[c]["duration_s"] is None
    assert rows[a]["duration_s"] == pytest.approx(30, abs=0.5)
    assert rows[b]["experiment_name"] == "beta-place"


def test_searches_names_notes_and_ids_and_filters(
    client: TestClient, world: World, three_runs: dict[str, int]
) -> None:
    admin = world.secrets["admin"] or ""
    a, b, c = three_runs["alpha"], three_runs["beta"], three_runs["gamma"]
    noted = client.patch(
        f"{API}/runs/{b}", headers=bearer(admin), json={"notes": "lr 1e-4 100% diverged"}
    )
    assert noted.status_code == 200 and noted.json()["notes"] == "lr 1e-4 100% diverged"

    assert ids(client, admin, "q=ALPHA") == [c, a]
    assert ids(client, admin, "q=100%25") == [b]  # % is text, not a wildcard
    assert ids(client, admin, "q=_") == []
    assert ids(client, admin, f"q=run {b}") == [b]
    assert ids(client, admin, "status=succeeded&order=asc") == [a, b]
    assert ids(client, admin, f"experiment_id={three_runs['alpha_experiment']}") == [c, a]
    today = utcnow().date()
    assert ids(client, admin, f"created_from={today}&created_to={today}") == [c, b, a]
    assert ids(client, admin, f"created_from={today + timedelta(days=1)}") == []
    assert ids(client, admin, "status=&experiment_id=&q=") == [c, b, a]  # an empty form
    page = client.get(f"{API}/runs?limit=2&offset=2", headers=bearer(admin)).json()
    assert page["count"] == 3 and [row["id"] for row in page["data"]] == [a]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("sort=loss", "sort"),
        ("order=up", "order"),
        ("status=done", "status"),
        ("created_from=yesterday", "created_from"),
        ("created_to=0", "created_to"),
        ("created_from=2026-02-02&created_to=2026-02-01", "created_to"),
        ("q=" + "x" * 201, "q"),
        ("q=a%00b", "q"),
    ],
)
def test_bad_list_parameters_answer_422_naming_them(
    client: TestClient, world: World, query: str, field: str
) -> None:
    response = client.get(f"{API}/runs?{query}", headers=bearer(world.secrets["viewer"] or ""))

    assert response.status_code == 422, response.text
    assert field in [problem["field"] for problem in response.json()["errors"]]


def test_operators_list_only_runs_of_their_experiments(
    client: TestClient, session: Session, settings: Settings, world: World
) -> None:
    own = launch(session, settings, world.experiment_id)
    other = make_experiment(session, deployment_body([world.other_site_id]))
    assert other.id is not None
    launch(session, settings, other.id)

    assert ids(client, world.secrets["operator_own"] or "", "") == [own.id]
    assert ids(client, world.secrets["operator_unbound"] or "", "") == []


@pytest.mark.parametrize(
    ("actor", "expected"),
    [
        ("anonymous", 401),
        ("viewer", 403),
        ("operator_other", 403),
        ("operator_unbound", 403),
        ("operator_own", 200),
        ("admin", 200),
    ],
)
def test_notes_are_written_by_operators_and_admins_of_the_run(
    client: TestClient,
    session: Session,
    settings: Settings,
    world: World,
    actor: str,
    expected: int,
) -> None:
    run = launch(session, settings, world.experiment_id)
    secret = world.secrets[actor]
    headers = bearer(secret) if secret else {}

    response = client.patch(f"{API}/runs/{run.id}", headers=headers, json={"notes": "camera moved"})

    assert response.status_code == expected, response.text
    session.refresh(run)
    assert run.notes == ("camera moved" if expected == 200 else "")
    if expected == 200:
        read = client.get(f"{API}/runs/{run.id}", headers=bearer(world.secrets["viewer"] or ""))
        assert read.json()["notes"] == "camera moved"


def test_notes_are_shown_as_written_even_to_those_who_see_no_server_paths(
    client: TestClient, session: Session, settings: Settings, world: World
) -> None:
    run = launch(session, settings, world.experiment_id)
    notes = "recorded to /mnt/lab-a/so101 on Tuesday"
    client.patch(
        f"{API}/runs/{run.id}", headers=bearer(world.secrets["admin"] or ""), json={"notes": notes}
    )
    viewer = bearer(world.secrets["viewer"] or "")

    one = client.get(f"{API}/runs/{run.id}", headers=viewer).json()
    listed = client.get(f"{API}/runs", headers=viewer).json()["data"]

    assert one["notes"] == notes and listed[0]["notes"] == notes


def test_notes_longer_than_the_limit_answer_422_naming_notes(
    client: TestClient, session: Session, settings: Settings, world: World
) -> None:
    run = launch(session, settings, world.experiment_id)
    admin = bearer(world.secrets["admin"] or "")

    too_long = client.patch(
        f"{API}/runs/{run.id}", headers=admin, json={"notes": "x" * (MAX_RUN_NOTES_LENGTH + 1)}
    )
    unknown = client.patch(f"{API}/runs/{run.id}", headers=admin, json={"status": "failed"})

    assert too_long.status_code == 422
    assert [p["field"] for p in too_long.json()["errors"]] == ["notes"]
    nul = client.patch(f"{API}/runs/{run.id}", headers=admin, json={"notes": "a\u0000b"})
    assert unknown.status_code == 422
    assert "status" in [p["field"] for p in unknown.json()["errors"]]
    assert nul.status_code == 422 and nul.json()["errors"][0]["field"] == "notes"


def test_exports_rounds_and_clients_as_csv_and_json(
    client: TestClient, world: World, three_runs: dict[str, int]
) -> None:
    viewer = bearer(world.secrets["viewer"] or "")
    a = three_runs["alpha"]

    rounds_csv = client.get(f"{API}/runs/{a}/export/rounds.csv", headers=viewer)
    clients_json = client.get(f"{API}/runs/{a}/export/clients.json", headers=viewer)
    clients_csv = client.get(f"{API}/runs/{a}/export/clients.csv", headers=viewer)
    rounds_json = client.get(f"{API}/runs/{a}/export/rounds.json", headers=viewer)

    assert rounds_csv.status_code == 200
    assert rounds_csv.headers["content-type"].startswith("text/csv")
    assert f'filename="run-{a}-rounds.csv"' in rounds_csv.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(rounds_csv.text)))
    assert [(r["round"], float(r["eval_loss"]), float(r["train_loss"])) for r in table] == [
        ("1", 0.9, 1.0),
        ("2", 0.5, 0.7),
    ]
    assert rounds_json.json() == client.get(f"{API}/runs/{a}/rounds", headers=viewer).json()["data"]
    clients = clients_json.json()
    assert [(c["round"], c["client"], c["train_loss"]) for c in clients] == [
        (1, "client-0", 1.0), (1, "client-1", 2.0), (2, "client-0", 0.7), (2, "client-1", 1.7),
    ]  # fmt: skip
    assert len(list(csv.DictReader(io.StringIO(clients_csv.text)))) == 4
    assert client.get(f"{API}/runs/{a}/export/rounds.xml", headers=viewer).status_code == 422
    assert client.get(f"{API}/runs/{a}/export/rounds.csv").status_code == 401


def test_exports_and_log_follow_the_rules_of_reading_the_run(
    client: TestClient, session: Session, settings: Settings, world: World
) -> None:
    run = launch(session, settings, world.experiment_id)
    assert run.id is not None
    log = run_files.log_path(settings, run.storage_key)
    log.parent.mkdir(parents=True)
    log.write_text(f"loading {settings.data_dir}/assets/tiny_vlm\nround 1 done\n")
    other = bearer(world.secrets["operator_other"] or "")
    own = bearer(world.secrets["operator_own"] or "")
    admin = bearer(world.secrets["admin"] or "")

    assert client.get(f"{API}/runs/{run.id}/export/rounds.csv", headers=other).status_code == 403
    assert client.get(f"{API}/runs/{run.id}/log", headers=other).status_code == 403
    assert client.get(f"{API}/runs/{run.id}/export/rounds.csv", headers=own).text == (
        "round,eval_loss,eval_action_mse,fed_eval_loss,fed_eval_action_mse,fed_eval_samples,"
        "train_loss,duration_s,bytes_sent,bytes_received,clients_sampled,clients_succeeded,"
        "clients_failed,created_at\n"
    )
    as_operator = client.get(f"{API}/runs/{run.id}/log", headers=own)
    as_admin = client.get(f"{API}/runs/{run.id}/log", headers=admin)
    assert as_operator.status_code == 200
    assert as_operator.headers["content-type"].startswith("text/plain")
    assert f'filename="run-{run.id}-federation.log"' in as_operator.headers["content-disposition"]
    assert as_operator.text == "loading <server path>\nround 1 done\n"
    assert as_admin.text == log.read_text()


def test_a_run_no_worker_started_has_no_log_yet(
    client: TestClient, session: Session, settings: Settings, world: World, tmp_path: Path
) -> None:
    run = launch(session, settings, world.experiment_id)

    response = client.get(f"{API}/runs/{run.id}/log", headers=bearer(world.secrets["admin"] or ""))

    assert response.status_code == 404
    assert "worker" in response.json()["detail"]

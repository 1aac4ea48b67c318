"""The role matrix: every route of the foundation's API x every kind of caller -> status.

Then the derived reads: compatibility, /workers' current run, and server paths in runs, events and
pages, which only admins see.

Callers: no token, a viewer, the operator of a site that is not the one addressed (and does not
take part in the experiment), the operator of the addressed site, an operator token with no site
yet (it may register one site, nothing more), an admin.
"""

from collections.abc import Callable
from typing import Any

import pytest
from bs4 import BeautifulSoup
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from fedvla.core.models import ClientMetric, Run, RunStatus, WorkerNode
from fedvla.core.services.events import append_event
from tests.api.conftest import ACTORS, World
from tests.datasets import root_of
from tests.factories import bearer, deployment_body, simulation_body, site_body

Body = Callable[[World], dict[str, Any]] | None

# method, path (formatted with the World), body, statuses for ACTORS:
#                          anonymous viewer op-other op-own op-unbound admin
MATRIX: list[tuple[str, str, Body, tuple[int, int, int, int, int, int]]] = [
    ("GET", "/health", None, (200, 200, 200, 200, 200, 200)),
    ("POST", "/experiments", lambda w: simulation_body(), (401, 403, 403, 403, 403, 201)),
    ("GET", "/experiments", None, (401, 200, 200, 200, 200, 200)),
    ("GET", "/experiments/{w.experiment_id}", None, (401, 200, 403, 200, 403, 200)),
    (
        "PATCH",
        "/experiments/{w.experiment_id}",
        lambda w: {"seed": 7},
        (401, 403, 403, 403, 403, 200),
    ),
    ("DELETE", "/experiments/{w.experiment_id}", None, (401, 403, 403, 403, 403, 204)),
    ("POST", "/sites", lambda w: site_body(), (401, 403, 403, 403, 201, 201)),
    ("GET", "/sites", None, (401, 200, 200, 200, 200, 200)),
    ("GET", "/sites/{w.own_site_id}", None, (401, 200, 403, 200, 403, 200)),
    (
        "PATCH",
        "/sites/{w.own_site_id}",
        lambda w: {"hardware": "A100"},
        (401, 403, 403, 200, 403, 200),
    ),
    ("POST", "/sites/{w.own_site_id}/approve", lambda w: {}, (401, 403, 403, 403, 403, 200)),
    ("POST", "/sites/{w.own_site_id}/revoke", lambda w: {}, (401, 403, 403, 403, 403, 200)),
    ("GET", "/sites/{w.own_site_id}/audit", None, (401, 200, 403, 200, 403, 200)),
    ("DELETE", "/sites/{w.own_site_id}", None, (401, 403, 403, 403, 403, 204)),
    (
        "POST",
        "/tokens",
        lambda w: {"name": "new", "role": "viewer"},
        (401, 403, 403, 403, 403, 201),
    ),
    ("GET", "/tokens", None, (401, 403, 403, 403, 403, 200)),
    ("POST", "/tokens/{w.spare_token_id}/revoke", None, (401, 403, 403, 403, 403, 200)),
]

DERIVED: list[tuple[str, str, Body, tuple[int, int, int, int, int, int]]] = [
    # Derived reads obey the experiment's read rule: an operator's own site checked against an
    # experiment that site does not take part in is refused, as GET /experiments/{id} is.
    (
        "GET",
        "/sites/{w.other_site_id}/compatibility?experiment_id={w.experiment_id}",
        None,
        (401, 200, 403, 403, 403, 200),
    ),
    (
        "GET",
        "/sites/{w.own_site_id}/compatibility?experiment_id={w.experiment_id}",
        None,
        (401, 200, 403, 200, 403, 200),
    ),
]

FOUNDATION_TAGS = {"health", "experiments", "sites", "tokens"}

CASES = [
    pytest.param(method, path, body, actor, expected, id=f"{method} {path} {actor}")
    for method, path, body, statuses in MATRIX + DERIVED
    for actor, expected in zip(ACTORS, statuses, strict=True)
]


@pytest.mark.parametrize(("method", "path", "body", "actor", "expected"), CASES)
def test_role_matrix(
    client: TestClient,
    world: World,
    method: str,
    path: str,
    body: Body,
    actor: str,
    expected: int,
) -> None:
    secret = world.secrets[actor]
    response = client.request(
        method,
        "/api/v1" + path.format(w=world),
        json=body(world) if body else None,
        headers=bearer(secret) if secret else {},
    )

    assert response.status_code == expected, response.text
    if expected >= 400:
        assert response.json()["detail"]
    if expected == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_matrix_covers_every_foundation_route(app: FastAPI) -> None:
    served = {
        (method.upper(), path.removeprefix("/api/v1"))
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if FOUNDATION_TAGS & set(operation.get("tags", []))
    }
    placeholders = {
        "{w.experiment_id}": "{experiment_id}",
        "{w.own_site_id}": "{site_id}",
        "{w.spare_token_id}": "{token_id}",
    }
    in_matrix = set()
    for method, path, *_ in MATRIX:
        for placeholder, name in placeholders.items():
            path = path.replace(placeholder, name)
        in_matrix.add((method, path))

    assert served == in_matrix


# --------------------------------------------------------------------------- derived reads


@pytest.fixture
def running(session: Session, world: World) -> Run:
    """A run of the world's experiment that failed on a server file, a checkpoint event with
    its folder, and a worker that works on it."""
    folder = "/srv/fedvla/runs/7/round_1/pretrained_model"
    run = Run(
        experiment_id=world.experiment_id,
        config={"resume": {"checkpoint_dir": "/srv/fedvla/runs/3/round_2", "round": 2}},
        status=RunStatus.failed,
        error=f"FileNotFoundError: [Errno 2] No such file or directory: '{folder}/weights'",
    )
    session.add(run)
    session.flush()
    assert run.id is not None
    append_event(session, run.id, "checkpoint", "checkpoint of round 1 saved", {"path": folder})
    session.add(ClientMetric(run_id=run.id, round=1, client="0", ok=False, error=f"{folder}: gone"))
    session.add(WorkerNode(name="w1", host="gpu-1", queue="gpu", current_run_id=run.id))
    session.commit()
    session.refresh(run)
    return run


WORKER_RUN = {
    "viewer": True,
    "operator_other": False,
    "operator_own": True,
    "operator_unbound": False,
    "admin": True,
}


@pytest.mark.parametrize("actor", list(WORKER_RUN))
def test_workers_name_only_runs_the_caller_may_read(
    client: TestClient, world: World, running: Run, actor: str
) -> None:
    response = client.get("/api/v1/workers", headers=bearer(world.secrets[actor] or ""))

    assert response.status_code == 200
    [worker] = response.json()["data"]
    assert worker["current_run_id"] == (running.id if WORKER_RUN[actor] else None)
    readable = client.get(f"/api/v1/runs/{running.id}", headers=bearer(world.secrets[actor] or ""))
    assert (readable.status_code == 200) == WORKER_RUN[actor]


@pytest.mark.parametrize("actor", ["viewer", "operator_own", "admin"])
def test_only_admins_see_server_paths(
    client: TestClient, world: World, running: Run, actor: str
) -> None:
    headers = bearer(world.secrets[actor] or "")
    answers = [
        client.get(f"/api/v1/runs/{running.id}", headers=headers),
        client.get("/api/v1/runs", headers=headers),
        client.get(f"/api/v1/runs/{running.id}/events.json", headers=headers),
        client.get(f"/api/v1/runs/{running.id}/clients", headers=headers),
    ]

    for answer in answers:
        assert answer.status_code == 200, answer.text
        shows = "/srv/fedvla" in answer.text
        assert shows == (actor == "admin"), (answer.url, answer.text)
        if actor != "admin":
            assert "<server path>" in answer.text
    error = answers[0].json()["error"]
    if actor == "admin":
        assert error.startswith("FileNotFoundError: [Errno 2] No such file or directory: ")
    else:  # no errno, no path: what happened, in words
        assert error.startswith(
            "FileNotFoundError: a file on the server could not be used (no such file or directory)"
        )
        assert not any("[Errno" in answer.text for answer in answers)


@pytest.mark.parametrize("actor", ["viewer", "operator_own", "admin"])
def test_only_admins_see_the_dataset_folders_of_experiments(
    client: TestClient, world: World, actor: str
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    dataset = {"repo_id": "test/so100_pick", "root": str(root_of("test/so100_pick"))}
    body = deployment_body([world.own_site_id], eval_datasets=[dataset])
    created = client.patch(f"/api/v1/experiments/{world.experiment_id}", json=body, headers=admin)
    assert created.status_code == 200, created.text
    headers = bearer(world.secrets[actor] or "")

    one = client.get(f"/api/v1/experiments/{world.experiment_id}", headers=headers).json()
    listed = client.get("/api/v1/experiments", headers=headers).json()["data"]

    for experiment in (one, listed[0]):
        root = experiment["eval_datasets"][0]["root"]
        assert root == (dataset["root"] if actor == "admin" else "<server path>")


@pytest.mark.parametrize("actor", ["viewer", "admin"])
def test_run_pages_hide_server_paths_from_non_admins(
    app: FastAPI, world: World, running: Run, actor: str
) -> None:
    with TestClient(app) as browser:
        form = browser.get("/signin")
        csrf = BeautifulSoup(form.text, "html.parser").find("input", attrs={"name": "csrf_token"})
        assert csrf is not None
        browser.post("/signin", data={"token": world.secrets[actor], "csrf_token": csrf["value"]})
        pages = [
            browser.get(f"/runs/{running.id}"),
            browser.get(f"/experiments/{world.experiment_id}"),
        ]

    assert all(page.status_code == 200 for page in pages)
    if actor == "admin":
        assert "/srv/fedvla" in pages[0].text
    else:
        assert not any("/srv/fedvla" in page.text for page in pages)
        assert "&lt;server path&gt;" in pages[0].text

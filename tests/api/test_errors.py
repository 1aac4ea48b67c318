"""Bad input answers 4xx with the canonical body; nothing is stored by a failed write."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fedvla.core.config import Settings
from fedvla.core.errors import Conflict
from fedvla.core.models import Experiment, ExperimentSite
from fedvla.core.services import experiments as experiment_service
from fedvla.web.api.errors import http_status
from fedvla.web.main import create_app
from tests.api.conftest import World
from tests.factories import bearer, simulation_body

API = "/api/v1/experiments"


def _admin_json(world: World) -> dict[str, str]:
    return {**bearer(world.secrets["admin"] or ""), "Content-Type": "application/json"}


def test_malformed_json_is_422_naming_the_body(client: TestClient, world: World) -> None:
    response = client.post(API, content=b'{"name": "x",', headers=_admin_json(world))

    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "Malformed JSON"
    assert body["errors"][0]["field"] == "body"
    assert "character" in body["errors"][0]["reason"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [(b"[1, 2]", "application/json"), (b"name=x", "application/x-www-form-urlencoded")],
)
def test_a_body_that_is_not_an_object_is_422(
    client: TestClient, world: World, content: bytes, content_type: str
) -> None:
    headers = {**bearer(world.secrets["admin"] or ""), "Content-Type": content_type}

    response = client.post(API, content=content, headers=headers)

    assert response.status_code == 422
    assert response.json()["detail"] == "Validation failed"
    assert response.json()["errors"][0]["field"] == "body"


def test_oversized_body_is_413_by_its_declared_length(client: TestClient, world: World) -> None:
    body = b'{"name": "' + b"x" * 2_000_000 + b'"}'

    response = client.post(API, content=body, headers=_admin_json(world))

    assert response.status_code == 413
    assert response.json()["detail"] == "Request body too large"
    assert response.json()["errors"][0]["field"] == "body"


def test_oversized_streamed_body_is_413_without_a_length(
    client: TestClient, world: World, session: Session
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "streamed", "description": "'
        for _ in range(40):
            yield b"y" * 65_536
        yield b'"}'

    response = client.post(API, content=chunks(), headers=_admin_json(world))

    assert response.status_code == 413
    assert session.exec(select(Experiment).where(Experiment.name == "streamed")).first() is None


def test_small_streamed_body_passes(client: TestClient, world: World) -> None:
    encoded = json.dumps(simulation_body(name="streamed-ok")).encode()

    def chunks() -> Iterator[bytes]:
        yield encoded[:10]
        yield encoded[10:]

    response = client.post(API, content=chunks(), headers=_admin_json(world))

    assert response.status_code == 201, response.text


def test_query_parameters_are_validated(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    for params, field in (({"limit": 0}, "limit"), ({"offset": -1}, "offset")):
        response = client.get(API, params=params, headers=admin)

        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == field
    wrong_id = client.get(f"{API}/abc", headers=admin)
    assert wrong_id.status_code == 422
    assert wrong_id.json()["errors"][0]["field"] == "experiment_id"


def test_unknown_route_and_method_use_the_canonical_body(client: TestClient) -> None:
    missing = client.get("/api/v1/nothing-here")
    wrong_method = client.put("/api/v1/health")

    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found", "errors": []}
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"detail": "Method Not Allowed", "errors": []}


def test_a_constraint_violation_at_commit_rolls_back_everything(
    session: Session, world: World
) -> None:
    """The services check names first; this drives the commit-time path they rely on anyway."""
    existing = session.get(Experiment, world.experiment_id)
    assert existing is not None
    clash = Experiment(name=existing.name, config=existing.config, mode=existing.mode)

    with pytest.raises(Conflict) as caught:
        experiment_service._save(session=session, experiment=clash, site_ids=[world.other_site_id])

    assert http_status(caught.value) == 409
    names = session.exec(select(Experiment.name)).all()
    assert names == [existing.name]
    links = session.exec(select(ExperimentSite)).all()
    assert [(link.experiment_id, link.site_id) for link in links] == [
        (world.experiment_id, world.own_site_id)
    ]


def test_health_is_503_naming_the_broker_when_it_is_down(
    settings: Settings, tmp_path: Path
) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})

    with TestClient(create_app(down)) as client:
        response = client.get("/api/v1/health")

    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert body["database"] == {"ok": True, "error": None}
    assert body["broker"]["ok"] is False
    assert body["broker"]["error"]


def test_health_is_503_naming_the_database_when_it_is_down(
    settings: Settings, tmp_path: Path
) -> None:
    down = settings.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"}
    )

    with TestClient(create_app(down)) as client:
        response = client.get("/api/v1/health")

    assert response.status_code == 503
    assert response.json()["database"]["ok"] is False
    assert response.json()["broker"] == {"ok": True, "error": None}


def test_openapi_documents_models_examples_and_errors(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operations = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
        if path.startswith("/api/v1/")
    ]

    assert document["components"]["securitySchemes"]["ApiToken"]["scheme"] == "bearer"
    for path, method, operation in operations:
        assert operation.get("tags"), (path, method)
        if operation["tags"][0] in {"experiments", "sites", "tokens"}:
            assert "401" in operation["responses"], (path, method)
            assert "422" in operation["responses"], (path, method)
    schemas = document["components"]["schemas"]
    assert schemas["ExperimentCreate"]["examples"]
    assert schemas["SiteCreate"]["examples"]
    assert schemas["ErrorBody"]["properties"].keys() == {"detail", "errors"}
    assert client.get("/docs").status_code == 200


@pytest.mark.timeout(60)
def test_no_route_answers_500_to_out_of_range_ids(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    document = client.get("/openapi.json").json()
    paths = [
        path
        for path, operations in document["paths"].items()
        if "get" in operations and "{" in path and path.startswith("/api/v1/")
    ]
    assert paths

    for path in paths:
        url = re.sub(r"\{[^}]+\}", str(10**30), path)
        response = client.get(url, headers=admin)

        assert response.status_code in (404, 422), (path, response.status_code, response.text)
        assert response.json()["detail"], path

"""An app per test, on the test's own database (SQLite and PostgreSQL), and a few actors."""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import Role
from fedvla.core.services.tokens import create_token
from fedvla.web.main import create_app
from tests.factories import deployment_body, make_experiment, make_site, make_token


@pytest.fixture(scope="session")
def openapi_document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The OpenAPI document, built once: it depends on the code, not on the settings, and
    building it takes seconds."""
    folder = tmp_path_factory.mktemp("openapi")
    settings = Settings(
        environment="test",
        data_dir=folder,
        database_url=f"sqlite:///{folder / 'unused.db'}",
        broker_url=f"sqla+sqlite:///{folder / 'broker.db'}",
        redis_url="",
    )
    return create_app(settings).openapi()


@pytest.fixture
def client(app: FastAPI, openapi_document: dict[str, Any]) -> Iterator[TestClient]:
    """Every answer a test receives must be one the OpenAPI document declares for its route."""
    answered: list[tuple[str, str, int]] = []

    def record(response: httpx.Response) -> None:
        request = response.request
        answered.append((request.method, request.url.path, response.status_code))

    with TestClient(app) as test_client:
        test_client.event_hooks["response"].append(record)
        yield test_client
    undeclared = [
        (method, path, status)
        for method, path, status in answered
        if status not in declared_statuses(openapi_document, method, path)
    ]
    assert not undeclared, f"answers the OpenAPI document does not declare: {undeclared}"


def declared_statuses(document: dict[str, Any], method: str, path: str) -> set[int]:
    """The statuses the document declares for the operation that serves ``method path``;
    every status for a path outside the API (pages, the document itself), and 405 anywhere."""
    for template, operations in document["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return {int(code) for code in operations[method.lower()]["responses"]} | {405}
    return set(range(100, 600)) if not path.startswith("/api/v1/") else {404, 405}


@dataclass
class World:
    """Two sites, an experiment that only site ``own`` takes part in, and a token per actor."""

    own_site_id: int
    other_site_id: int
    experiment_id: int
    spare_token_id: int
    secrets: dict[str, str | None]


ACTORS = ["anonymous", "viewer", "operator_other", "operator_own", "operator_unbound", "admin"]
"""operator_unbound: an enrolment token, an operator token that has no site yet."""


@pytest.fixture
def world(session: Session) -> World:
    own = make_site(session)
    other = make_site(session)
    assert own.id is not None and other.id is not None
    experiment = make_experiment(session, deployment_body([own.id]))
    assert experiment.id is not None
    secrets: dict[str, str | None] = {
        "anonymous": None,
        "viewer": make_token(session, Role.viewer),
        "operator_other": make_token(session, Role.operator, other.id),
        "operator_own": make_token(session, Role.operator, own.id),
        "operator_unbound": make_token(session, Role.operator),
        "admin": make_token(session, Role.admin),
    }
    spare, _ = create_token(session=session, name="spare", role=Role.viewer)
    assert spare.id is not None
    return World(own.id, other.id, experiment.id, spare.id, secrets)

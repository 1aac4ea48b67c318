"""An app per test, on the test's own database (SQLite and PostgreSQL), and a few actors."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.core.config import Settings
from app.main import create_app
from app.models import Role
from app.services.tokens import create_token
from tests.factories import deployment_body, make_experiment, make_site, make_token


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    application = create_app(settings)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def session(app: FastAPI) -> Iterator[Session]:
    with Session(app.state.engine) as db_session:
        yield db_session


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

"""Bearer tokens: 401 for anything but a live token, tokens API for admins."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fedvla.core.models import ApiToken, Role
from fedvla.core.security import hash_token
from fedvla.core.services import tokens as token_service
from tests.api.conftest import World
from tests.factories import bearer, make_token, site_body

API = "/api/v1/tokens"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer fvla_not-a-real-token",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "fvla_without_scheme",
    ],
)
def test_missing_or_unknown_token_is_401(
    client: TestClient, world: World, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}

    response = client.get("/api/v1/experiments", headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "Missing or invalid bearer token", "errors": []}


def test_created_token_works_once_shown_and_is_stored_hashed(
    client: TestClient, world: World, session: Session
) -> None:
    admin = bearer(world.secrets["admin"] or "")

    created = client.post(API, json={"name": "ci-viewer", "role": "viewer"}, headers=admin)

    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("fvla_")
    assert client.get("/api/v1/experiments", headers=bearer(secret)).status_code == 200
    listed = client.get(API, headers=admin).json()
    row = next(t for t in listed["data"] if t["name"] == "ci-viewer")
    assert "token" not in row
    assert secret.startswith(row["prefix"])
    stored = session.exec(select(ApiToken).where(ApiToken.name == "ci-viewer")).one()
    assert stored.token_hash == hash_token(secret)
    assert secret not in stored.model_dump_json()


def test_revoked_token_is_refused(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    created = client.post(API, json={"name": "temp", "role": "viewer"}, headers=admin).json()

    revoked = client.post(f"{API}/{created['id']}/revoke", headers=admin)

    assert revoked.json()["revoked"] is True
    assert client.get("/api/v1/sites", headers=bearer(created["token"])).status_code == 401


def test_use_is_recorded_at_most_once_a_minute(
    client: TestClient, world: World, session: Session
) -> None:
    secret = make_token(session, Role.viewer)
    token = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(secret))).one()
    assert token.last_used_at is None

    client.get("/api/v1/sites", headers=bearer(secret))
    session.refresh(token)
    first_use = token.last_used_at
    client.get("/api/v1/sites", headers=bearer(secret))
    session.refresh(token)
    unchanged = token.last_used_at
    long_ago = first_use - 2 * token_service.LAST_USED_RESOLUTION  # type: ignore[operator]
    token.last_used_at = long_ago
    session.add(token)
    session.commit()
    client.get("/api/v1/sites", headers=bearer(secret))
    session.refresh(token)

    assert first_use is not None
    assert unchanged == first_use
    assert token.last_used_at is not None and token.last_used_at > long_ago


def test_an_operator_token_may_start_without_a_site(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")

    created = client.post(API, json={"name": "lab-new", "role": "operator"}, headers=admin)

    assert created.status_code == 201, created.text
    assert (created.json()["role"], created.json()["site_id"]) == ("operator", None)
    registered = client.post(
        "/api/v1/sites", json=site_body(), headers=bearer(created.json()["token"])
    )
    assert registered.status_code == 201, registered.text
    listed = {t["name"]: t["site_id"] for t in client.get(API, headers=admin).json()["data"]}
    assert listed["lab-new"] == registered.json()["id"]


def test_token_requests_are_validated(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    cases = [
        ({"name": "op", "role": "operator", "site_id": 424242}, 422),
        ({"name": "v", "role": "viewer", "site_id": world.own_site_id}, 422),
        ({"name": "x", "role": "root"}, 422),
        ({"name": "", "role": "viewer"}, 422),
        ({"name": "spare", "role": "viewer"}, 409),
    ]
    for body, expected in cases:
        response = client.post(API, json=body, headers=admin)

        assert response.status_code == expected, (body, response.text)
        assert response.json()["errors"], body
    assert client.get(API, headers=admin).json()["count"] == 6  # the world's tokens
    unknown = client.post(f"{API}/424242/revoke", headers=admin)
    assert unknown.json() == {"detail": "Token not found", "errors": []}


def test_ensure_admin_creates_only_when_no_live_admin(session: Session, world: World) -> None:
    assert token_service.ensure_admin(session=session) is None  # the world has one
    for token in session.exec(select(ApiToken).where(ApiToken.role == Role.admin)):
        token_service.revoke_token(session=session, token=token)

    first = token_service.ensure_admin(session=session)
    second = token_service.ensure_admin(session=session)

    assert first is not None and first.startswith("fvla_")
    assert second is None
    assert token_service.authenticate(session=session, secret=first) is not None

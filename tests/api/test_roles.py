"""The role matrix: every route of the foundation's API x every kind of caller -> status.

Callers: no token, a viewer, the operator of a site that is not the one addressed (and does not
take part in the experiment), the operator of the addressed site, an operator token with no site
yet (it may register one site, nothing more), an admin.
"""

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api.conftest import ACTORS, World
from tests.factories import bearer, simulation_body, site_body

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

FOUNDATION_TAGS = {"health", "experiments", "sites", "tokens"}

CASES = [
    pytest.param(method, path, body, actor, expected, id=f"{method} {path} {actor}")
    for method, path, body, statuses in MATRIX
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

"""Names of experiments, sites and tokens: trimmed; blank ones and ones with control or format
characters (bidirectional overrides, zero-width spaces, NUL) refused with 422 naming the field."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fedvla.core.errors import InvalidFields
from fedvla.core.models import Role
from fedvla.core.services import tokens as token_service
from tests.api.conftest import World
from tests.factories import bearer, simulation_body, site_body

REFUSED = {
    "   ": "empty or only whitespace",
    "\t\n": "empty or only whitespace",
    "lab\u202egnp.exe": "U+202E",  # right-to-left override
    "lab\u2066a": "U+2066",  # left-to-right isolate
    "lab\u200ba": "U+200B",  # zero-width space
    "lab\x1b[31ma": "U+001B",  # escape
    "lab\x00a": "U+0000",
}


def _create(client: TestClient, world: World, kind: str, name: str) -> Any:
    admin = bearer(world.secrets["admin"] or "")
    body = {
        "experiments": simulation_body(name=name),
        "sites": site_body(name=name),
        "tokens": {"name": name, "role": "viewer"},
    }[kind]
    return client.post(f"/api/v1/{kind}", json=body, headers=admin)


@pytest.mark.parametrize("kind", ["experiments", "sites", "tokens"])
@pytest.mark.parametrize("name", list(REFUSED))
def test_bad_names_are_422_naming_the_field_and_reason(
    client: TestClient, world: World, kind: str, name: str
) -> None:
    response = _create(client, world, kind, name)

    assert response.status_code == 422, response.text
    [problem] = response.json()["errors"]
    assert problem["field"] == "name"
    assert REFUSED[name] in problem["reason"]


@pytest.mark.parametrize("kind", ["experiments", "sites", "tokens"])
def test_names_are_trimmed(client: TestClient, world: World, kind: str) -> None:
    response = _create(client, world, kind, "  lab north \t")

    assert response.status_code == 201, response.text
    assert response.json()["name"] == "lab north"


def test_renames_follow_the_same_rule(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    experiment = client.patch(
        f"/api/v1/experiments/{world.experiment_id}", json={"name": " \u2067x"}, headers=admin
    )
    site = client.patch(f"/api/v1/sites/{world.own_site_id}", json={"name": " "}, headers=admin)

    assert experiment.status_code == 422 and experiment.json()["errors"][0]["field"] == "name"
    assert site.status_code == 422 and site.json()["errors"][0]["field"] == "name"


def test_the_cli_path_uses_the_same_rule(session: Session, world: World) -> None:
    with pytest.raises(InvalidFields) as refused:
        token_service.create_token(session=session, name="op\u202e", role=Role.viewer)

    assert refused.value.errors[0].field == "name"
    assert "U+202E" in refused.value.errors[0].reason
    token, _ = token_service.create_token(session=session, name=" ci ", role=Role.viewer)
    assert token.name == "ci"

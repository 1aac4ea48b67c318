"""The API says what it does: timestamps with offsets, 422 for bodies that do not parse, bounded
integers that name their parameter, and 405s that list every method of the path."""

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.services.events import event_json
from fedvla.core.services.runs import run_events
from tests.api.conftest import World
from tests.factories import bearer, finish_with_reports, simulation_body

API = "/api/v1"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _admin(world: World) -> dict[str, str]:
    return bearer(world.secrets["admin"] or "")


def _timestamps(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str) and TIMESTAMP.match(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _timestamps(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _timestamps(item, f"{path}.{index}")


def _has_offset(text: str) -> bool:
    return datetime.fromisoformat(text).utcoffset() is not None


def _json_get_paths(document: dict[str, Any]) -> list[str]:
    return [
        path
        for path, operations in document["paths"].items()
        if path.startswith(API)
        and "get" in operations
        and "application/json" in operations["get"]["responses"].get("200", {}).get("content", {})
    ]


def test_every_timestamp_the_api_answers_has_an_offset(
    client: TestClient, world: World, session: Session, settings: Settings
) -> None:
    """Every JSON GET route, on rows written by the real services and the worker's reporter."""
    admin = _admin(world)
    experiment = client.post(
        f"{API}/experiments", json=simulation_body(name="stamped"), headers=admin
    )
    run_id = client.post(f"{API}/experiments/{experiment.json()['id']}/runs", headers=admin).json()[
        "id"
    ]
    finish_with_reports(session, settings.database_url, run_id, settings.data_dir / "ckpt")
    ids = {
        "run_id": run_id,
        "experiment_id": experiment.json()["id"],
        "site_id": world.own_site_id,
        "round": 1,
        "token_id": world.spare_token_id,
        "table": "rounds",  # /runs/{run_id}/export/{table}.{fmt}
        "fmt": "json",
    }
    document = client.get("/openapi.json").json()

    seen: dict[str, list[str]] = {}
    for template in _json_get_paths(document):
        response = client.get(template.format(**ids), headers=admin)
        if response.status_code != 200:
            assert template.endswith("/node"), (template, response.text)  # no SuperLink here
            continue
        stamps = list(_timestamps(response.json()))
        seen[template] = [path for path, _ in stamps]
        assert all(_has_offset(text) for _, text in stamps), (template, stamps)

    resources = ("runs", "events.json", "rounds", "checkpoints", "workers", "experiments")
    resources += ("tokens", "audit", "sites")
    for resource in resources:
        assert any(template.endswith(resource) and seen[template] for template in seen), resource
    streamed = [event_json(event) for event in run_events(session, run_id, 0, 100)[0]]
    assert streamed and all(_has_offset(event["created_at"]) for event in streamed)


@pytest.mark.parametrize(
    "content",
    [b'\xff\xfe{"name": "x"}', b"[" * 100_000 + b"]" * 100_000],
    ids=["not-utf8", "nested-too-deeply"],
)
def test_a_body_that_cannot_be_parsed_is_422_naming_the_body(
    client: TestClient, world: World, content: bytes
) -> None:
    headers = {**_admin(world), "Content-Type": "application/json"}

    response = client.post(f"{API}/experiments", content=content, headers=headers)

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "Malformed JSON"
    assert response.json()["errors"][0]["field"] == "body"
    assert response.json()["errors"][0]["location"] == "body"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/experiments/1", "DELETE, GET, PATCH"),
        ("PUT", "/experiments", "GET, POST"),
        ("DELETE", "/runs/1", "GET, PATCH"),
        ("GET", "/runs/1/cancel", "POST"),
    ],
)
def test_405_lists_every_method_of_the_path(
    client: TestClient, world: World, method: str, path: str, allowed: str
) -> None:
    response = client.request(method, f"{API}{path}", headers=_admin(world))

    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json() == {"detail": "Method Not Allowed", "errors": []}


TOO_BIG = str(2**64)


@pytest.mark.parametrize(
    ("url", "headers", "field", "location"),
    [
        (f"/runs/{TOO_BIG}", {}, "run_id", "path"),
        (f"/runs/{TOO_BIG}/checkpoints", {}, "run_id", "path"),
        (f"/runs/1/checkpoints/{TOO_BIG}/archive", {}, "round", "path"),
        (f"/runs?experiment_id={TOO_BIG}", {}, "experiment_id", "query"),
        (f"/runs/1/clients?round={TOO_BIG}", {}, "round", "query"),
        (f"/runs/1/events.json?after_id={TOO_BIG}", {}, "after_id", "query"),
        (f"/runs/1/events?after_id={TOO_BIG}", {}, "after_id", "query"),
        ("/runs/1/events", {"Last-Event-ID": TOO_BIG}, "last-event-id", "header"),
        (f"/experiments?offset={TOO_BIG}", {}, "offset", "query"),
    ],
)
def test_an_integer_out_of_range_is_422_naming_its_parameter(
    client: TestClient, world: World, url: str, headers: dict[str, str], field: str, location: str
) -> None:
    response = client.get(f"{API}{url}", headers={**_admin(world), **headers})

    assert response.status_code == 422, response.text
    [problem] = response.json()["errors"]
    assert (problem["field"], problem["location"]) == (field, location)


def _integer_schemas(schema: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            yield path, schema
        for key, value in schema.items():
            yield from _integer_schemas(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _integer_schemas(value, f"{path}.{index}")


def _request_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """The schemas of request bodies, and every schema they refer to."""
    schemas = document["components"]["schemas"]
    found: dict[str, Any] = {}
    pending = re.findall(r"#/components/schemas/(\w+)", str(_operations(document, "requestBody")))
    while pending:
        name = pending.pop()
        if name not in found:
            found[name] = schemas[name]
            pending += re.findall(r"#/components/schemas/(\w+)", str(schemas[name]))
    return found


def _operations(document: dict[str, Any], key: str) -> list[tuple[str, Any]]:
    return [
        (f"{method} {path}", operation[key])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if key in operation
    ]


def test_every_integer_a_client_sends_is_bounded(client: TestClient) -> None:
    """An unbounded integer reaches the database, which cannot hold 2**64: 500 or a wrong 422."""
    document = client.get("/openapi.json").json()
    inputs = [
        (f"{where} {parameter['name']}", parameter["schema"])
        for where, parameters in _operations(document, "parameters")
        for parameter in parameters
    ]
    inputs += list(_request_schemas(document).items())

    unbounded = [
        where
        for name, schema in inputs
        for where, integer in _integer_schemas(schema, name)
        if "maximum" not in integer or "minimum" not in integer
    ]

    assert len(inputs) > 20
    assert not unbounded


def test_every_error_a_route_declares_has_the_canonical_body(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    errors = [
        (f"{method} {path} {status}", response)
        for path, operations in document["paths"].items()
        if path.startswith(API) and path != f"{API}/health"
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if int(status) >= 400 and status != "416"
    ]

    assert len(errors) > 100
    for where, response in errors:
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, where
    assert "HTTPValidationError" not in document["components"]["schemas"]

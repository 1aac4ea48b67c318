"""Experiments through the REST API, on SQLite and PostgreSQL."""

import json
from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fedvla.core.models import Experiment, ExperimentSite, Role
from fedvla.core.services import experiments as experiment_service
from tests.api.conftest import World
from tests.factories import bearer, deployment_body, make_token, simulation_body

API = "/api/v1/experiments"


def test_create_get_list_patch_delete(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    body = simulation_body(name="pick-fedavg", description="two labs", seed=3)

    created = client.post(API, json=body, headers=admin)
    assert created.status_code == 201, created.text
    experiment = created.json()
    assert experiment["name"] == "pick-fedavg"
    assert experiment["partition"]["dataset"]["repo_id"] == "test/so100_pick"
    assert experiment["site_ids"] == []
    assert datetime.fromisoformat(experiment["created_at"]).utcoffset() == timedelta(0)

    fetched = client.get(f"{API}/{experiment['id']}", headers=admin).json()
    assert fetched == experiment

    listed = client.get(API, headers=admin).json()
    assert listed["count"] == 2  # with the world's deployment experiment
    assert listed["data"][0]["id"] == experiment["id"]  # newest first

    patched = client.patch(
        f"{API}/{experiment['id']}", json={"num_rounds": 9, "strategy": "fedadam"}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["num_rounds"] == 9
    assert patched.json()["strategy"] == "fedadam"
    assert patched.json()["description"] == "two labs"

    assert client.delete(f"{API}/{experiment['id']}", headers=admin).status_code == 204
    assert client.get(f"{API}/{experiment['id']}", headers=admin).status_code == 404


def test_pagination(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    for index in range(4):
        assert client.post(API, json=simulation_body(name=f"e{index}"), headers=admin).is_success

    page = client.get(API, params={"offset": 1, "limit": 2}, headers=admin).json()

    assert page["count"] == 5
    assert [e["name"] for e in page["data"]] == ["e2", "e1"]


def test_operator_lists_only_the_experiments_its_site_is_in(
    client: TestClient, world: World
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    assert client.post(API, json=simulation_body(), headers=admin).is_success

    own = client.get(API, headers=bearer(world.secrets["operator_own"] or "")).json()
    other = client.get(API, headers=bearer(world.secrets["operator_other"] or "")).json()
    viewer = client.get(API, headers=bearer(world.secrets["viewer"] or "")).json()

    assert [e["id"] for e in own["data"]] == [world.experiment_id]
    assert own["count"] == 1
    assert other == {"data": [], "count": 0}
    assert viewer["count"] == 2


def test_deployment_sites_are_linked_and_replaced(
    client: TestClient, world: World, session: Session
) -> None:
    admin = bearer(world.secrets["admin"] or "")

    response = client.patch(
        f"{API}/{world.experiment_id}",
        json={"site_ids": [world.own_site_id, world.other_site_id], "min_clients": 2},
        headers=admin,
    )

    assert response.status_code == 200, response.text
    assert response.json()["site_ids"] == sorted([world.own_site_id, world.other_site_id])
    links = session.exec(
        select(ExperimentSite.site_id).where(ExperimentSite.experiment_id == world.experiment_id)
    ).all()
    assert sorted(links) == sorted([world.own_site_id, world.other_site_id])
    other_operator = bearer(world.secrets["operator_other"] or "")
    assert client.get(f"{API}/{world.experiment_id}", headers=other_operator).status_code == 200


def test_config_of_is_the_federation_a_launch_freezes(session: Session, world: World) -> None:
    experiment = session.get(Experiment, world.experiment_id)
    assert experiment is not None

    config = experiment_service.config_of(session=session, experiment=experiment)

    assert config.mode == "deployment"
    assert config.site_ids == [world.own_site_id]
    assert config.policy == "tiny"


def test_an_experiment_that_cannot_run_is_refused_naming_the_field(
    client: TestClient, world: World
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    cases = {
        "num_rounds": simulation_body(num_rounds=0),
        "min_clients": simulation_body(min_clients=5),
        "partition.num_clients": simulation_body(
            partition={"dataset": {"repo_id": "x/y"}, "num_clients": 0}
        ),
        "client_datasets": simulation_body(partition=None),
        "strategy": simulation_body(strategy="fedprox"),
        "normalization": simulation_body(normalization="global"),
        "site_ids": deployment_body([world.own_site_id, 999_999]),
        "bogus": simulation_body(bogus=1),
    }
    for field, body in cases.items():
        response = client.post(API, json=body, headers=admin)

        assert response.status_code == 422, (field, response.text)
        assert response.json()["detail"] == "Validation failed"
        assert field in [e["field"] for e in response.json()["errors"]], (field, response.json())
    assert client.get(API, headers=admin).json()["count"] == 1


def test_non_finite_numbers_are_refused(client: TestClient, world: World) -> None:
    admin = {**bearer(world.secrets["admin"] or ""), "Content-Type": "application/json"}
    for field, literal in (("learning_rate", "Infinity"), ("proximal_mu", "NaN")):
        body = json.dumps(simulation_body())[:-1] + f', "{field}": {literal}}}'

        response = client.post(API, content=body, headers=admin)

        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field


def test_simulation_refuses_sites_and_deployment_needs_enough(
    client: TestClient, world: World
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    with_sites = simulation_body(site_ids=[world.own_site_id])
    too_few = deployment_body([world.own_site_id], min_clients=2)

    for body in (with_sites, too_few):
        response = client.post(API, json=body, headers=admin)
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "site_ids"


def test_duplicate_name_is_409_and_changes_nothing(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    first = client.post(API, json=simulation_body(name="same"), headers=admin).json()
    second = client.post(API, json=simulation_body(name="other", seed=5), headers=admin).json()

    duplicate = client.post(API, json=simulation_body(name="same"), headers=admin)
    rename = client.patch(f"{API}/{second['id']}", json={"name": "same", "seed": 99}, headers=admin)

    assert duplicate.status_code == 409
    assert duplicate.json() == {
        "detail": "An experiment named 'same' already exists",
        "errors": [{"field": "name", "reason": "already in use"}],
    }
    assert rename.status_code == 409
    assert client.get(f"{API}/{second['id']}", headers=admin).json() == second
    assert client.get(f"{API}/{first['id']}", headers=admin).json() == first


def test_invalid_patch_leaves_the_experiment_as_it_was(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    before = client.get(f"{API}/{world.experiment_id}", headers=admin).json()

    bad_value = client.patch(
        f"{API}/{world.experiment_id}", json={"seed": 4, "num_rounds": -1}, headers=admin
    )
    bad_combination = client.patch(
        f"{API}/{world.experiment_id}", json={"seed": 4, "min_clients": 3}, headers=admin
    )
    null_name = client.patch(f"{API}/{world.experiment_id}", json={"name": None}, headers=admin)

    assert bad_value.status_code == 422
    assert bad_value.json()["errors"][0]["field"] == "num_rounds"
    assert bad_combination.status_code == 422
    assert bad_combination.json()["errors"][0]["field"] == "site_ids"
    assert null_name.status_code == 422
    assert null_name.json()["errors"][0]["field"] == "name"
    assert client.get(f"{API}/{world.experiment_id}", headers=admin).json() == before


def test_unknown_experiment_is_404(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    for method in ("GET", "PATCH", "DELETE"):
        response = client.request(method, f"{API}/424242", json={}, headers=admin)

        assert response.status_code == 404
        assert response.json() == {"detail": "Experiment not found", "errors": []}
    for huge in (2**31, 10**30):
        response = client.get(f"{API}/{huge}", headers=admin)
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "experiment_id"


def test_nul_characters_are_refused_on_every_backend(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")

    response = client.post(API, json=simulation_body(description="a\x00b"), headers=admin)

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "description", "reason": "contains a NUL character"}
    ]


def test_delete_refused_while_a_run_is_active(
    client: TestClient, world: World, session: Session
) -> None:
    from fedvla.core.models import Run

    admin = bearer(world.secrets["admin"] or "")
    session.add(Run(experiment_id=world.experiment_id, config={}))
    session.commit()

    response = client.delete(f"{API}/{world.experiment_id}", headers=admin)

    assert response.status_code == 409
    assert client.get(f"{API}/{world.experiment_id}", headers=admin).status_code == 200


def test_operator_reads_the_experiment_its_site_takes_part_in(
    client: TestClient, world: World, session: Session
) -> None:
    secret = make_token(session, Role.operator, world.own_site_id)

    response = client.get(f"{API}/{world.experiment_id}", headers=bearer(secret))

    assert response.status_code == 200
    assert response.json()["site_ids"] == [world.own_site_id]

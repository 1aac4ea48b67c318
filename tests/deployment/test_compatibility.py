"""Embodiment compatibility: the report at registration and the 409 at launch."""

from fastapi.testclient import TestClient
from sqlmodel import Session

from fedvla.core.models import SiteFeatures, SiteStatus
from fedvla.core.services import compatibility
from fedvla.core.services import sites as site_service
from tests.api.conftest import World
from tests.factories import bearer, deployment_body, make_experiment, make_site, site_body

SO100 = {
    "state_dim": 6,
    "action_dim": 6,
    "action_names": ["pan", "lift", "elbow", "wrist_flex", "wrist_roll", "gripper"],
    "camera_keys": ["observation.images.cam1", "observation.images.cam2"],
    "camera_resolutions": {
        "observation.images.cam1": [480, 640, 3],
        "observation.images.cam2": [240, 320, 3],
    },
    "fps": 30,
}


def _features(**changes: object) -> SiteFeatures:
    return SiteFeatures.model_validate({**SO100, **changes})


def test_same_embodiment_has_no_mismatch() -> None:
    assert compatibility.compare(_features(), "so100", _features(), "so100") == []


def test_foreign_camera_is_mapped_to_the_missing_one_of_the_same_resolution() -> None:
    site = _features(
        camera_keys=["observation.images.cam1", "wrist"],
        camera_resolutions={"observation.images.cam1": [480, 640, 3], "wrist": [240, 320, 3]},
    )
    [mismatch] = compatibility.compare(site, "so100", _features(), "so100")
    assert mismatch.severity == "warning"  # the kit's node config maps it: it can train
    assert mismatch.reason == "camera 'observation.images.wrist' is not in the experiment"
    assert mismatch.fix == (
        "map it to 'observation.images.cam2' (the startup kit's node config does: camera-map)"
    )
    assert compatibility.camera_mapping(site, _features()) == {
        "observation.images.wrist": "observation.images.cam2"
    }


def test_every_kind_of_mismatch_is_named_with_a_fix() -> None:
    site = _features(
        state_dim=7,
        action_names=list(reversed(SO100["action_names"])),  # type: ignore[call-overload]
        camera_keys=["observation.images.cam1"],
        camera_resolutions={"observation.images.cam1": [720, 1280, 3]},
        fps=15,
    )
    found = {m.feature: m for m in compatibility.compare(site, "so101", _features(), "so100")}
    assert set(found) == {
        "state_dim",
        "action_names",
        "camera_keys",
        "camera_resolutions",
        "fps",
        "robot_type",
    }
    assert found["state_dim"].reason == "state has 7 dimensions, the experiment's has 6"
    assert found["action_names"].reason == "action joints are in another order"
    assert found["camera_keys"].reason == (
        "the experiment's camera 'observation.images.cam2' is missing"
    )
    assert "record (or resample the dataset) at 30 fps" in found["fps"].fix
    assert found["camera_resolutions"].severity == "warning"
    assert found["robot_type"].severity == "warning"


def test_a_declaration_that_contradicts_itself_is_reported() -> None:
    features = _features(action_names=["a", "b"], camera_resolutions={"side": [480, 640]})
    found = compatibility.declaration_mismatches(features)
    assert [m.reason for m in found] == [
        "2 action names for a action dim of 6",
        "a resolution for camera 'observation.images.side', which is not in camera_keys",
    ]


def test_registration_answers_with_the_report_against_the_experiments(
    client: TestClient, session: Session, world: World
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    reference = make_site(session, features=SO100)
    site_service.set_status(
        session=session, site=reference, status=SiteStatus.approved, actor="t", reason=""
    )
    assert reference.id is not None
    make_experiment(session, deployment_body([reference.id]))

    mismatched = {**SO100, "camera_keys": ["observation.images.cam1", "wrist"], "fps": 15}
    answer = client.post("/api/v1/sites", json=site_body(features=mismatched), headers=admin)

    assert answer.status_code == 201, answer.text
    [own] = answer.json()["compatibility"]  # in no experiment yet: its declaration only
    assert own["experiment_id"] is None and own["compatible"] is False
    assert own["mismatches"][0]["reason"] == (
        "a resolution for camera 'observation.images.cam2', which is not in camera_keys"
    )


def test_report_against_any_experiment_on_request(
    client: TestClient, session: Session, world: World
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    reference = make_site(session, features=SO100)
    assert reference.id is not None
    experiment = make_experiment(session, deployment_body([reference.id]))
    site = make_site(session, features={**SO100, "camera_keys": ["observation.images.cam1"]})

    answer = client.get(
        f"/api/v1/sites/{site.id}/compatibility",
        params={"experiment_id": experiment.id},
        headers=admin,
    )

    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["compatible"] is False
    assert report["reference"] == (
        f"site {reference.name!r} (id {reference.id}), the experiment's reference site"
    )
    assert [m["reason"] for m in report["mismatches"]] == [
        "a resolution for camera 'observation.images.cam2', which is not in camera_keys",
        "the experiment's camera 'observation.images.cam2' is missing",
    ]
    other_operator = bearer(world.secrets["operator_other"] or "")
    refused = client.get(
        f"/api/v1/sites/{site.id}/compatibility",
        params={"experiment_id": experiment.id},
        headers=other_operator,
    )
    assert refused.status_code == 403


def test_launch_refuses_an_incompatible_site_with_each_reason(
    client: TestClient, session: Session, world: World
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    good = make_site(session, features=SO100)
    bad = make_site(session, features={**SO100, "fps": 15, "action_dim": 7, "action_names": []})
    for site in (good, bad):
        site_service.set_status(
            session=session, site=site, status=SiteStatus.approved, actor="t", reason=""
        )
    assert good.id is not None and bad.id is not None
    experiment = make_experiment(session, deployment_body([good.id, bad.id]))

    answer = client.post(f"/api/v1/experiments/{experiment.id}/runs", headers=admin)

    assert answer.status_code == 409, answer.text
    reasons = {p["field"]: p["reason"] for p in answer.json()["errors"]}
    assert reasons == {
        f"sites.{bad.id}.features.action_dim": f"site {bad.name!r}: action has 7 dimensions, "
        "the experiment's has 6; fix: record actions with the experiment's 6 joints "
        "(pan, lift, elbow, wrist_flex, wrist_roll, gripper)",
        f"sites.{bad.id}.features.fps": f"site {bad.name!r}: recorded at 15 fps, the "
        "experiment at 30 fps; fix: record (or resample the dataset) at 30 fps: action chunks "
        "span a fixed number of frames",
    }

"""What an experiment's policy and data are checked for at create and at launch, before any GPU
time: 422 at create, 409 at launch, each naming the field and the fix, in well under a second.
The datasets are real LeRobot datasets written by fedvla.engine.data.synthetic
(tests/datasets.py)."""

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import World
from tests.datasets import LEROBOT_HOME, SPECS, root_of, write
from tests.factories import bearer, simulation_body

API = "/api/v1/experiments"
PICK = root_of("test/so100_pick")  # 4 episodes, 3 tasks, camera 'front'
TWO_CAMERAS = root_of("test/two_cameras")  # 2 episodes, 1 task, cameras 'top' and 'wrist'


def _partition(dataset: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"dataset": dataset, "num_clients": 2, **fields}


def _refusal(client: TestClient, world: World, body: dict[str, Any]) -> dict[str, str]:
    """POSTs body, expects 422, and returns its problems by field (one field's joined)."""
    admin = bearer(world.secrets["admin"] or "")
    started = time.perf_counter()
    response = client.post(API, json=body, headers=admin)
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 422, response.text
    problems: dict[str, str] = {}
    for error in response.json()["errors"]:
        problems[error["field"]] = "; ".join(
            filter(None, [problems.get(error["field"]), error["reason"]])
        )
    return problems


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (
            simulation_body(partition=_partition({"repo_id": "x/y", "root": "data/so100"})),
            "partition.dataset.root",
            ["relative path", "fix: give the dataset's absolute path"],
        ),
        (
            simulation_body(partition=_partition({"repo_id": "x/y", "root": "/nonexistent/so"})),
            "partition.dataset.root",
            ["no folder /nonexistent/so", "fix:"],
        ),
        (
            simulation_body(partition=_partition({"repo_id": "x/y", "root": str(LEROBOT_HOME)})),
            "partition.dataset.root",
            ["not a LeRobot dataset (no meta/info.json)"],
        ),
        (
            simulation_body(partition=_partition({"repo_id": "lab/not_downloaded"})),
            "partition.dataset.repo_id",
            ["not in the local LeRobot cache", "hf download lab/not_downloaded"],
        ),
        (
            simulation_body(
                partition=_partition({"repo_id": "x/y", "root": str(PICK)}, holdout_episodes=3)
            ),
            "partition.holdout_episodes",
            ["has 4 episodes", "needs at least 5 (2 clients + 3 held out", "at most 2"],
        ),
        (  # the default hold-out (one episode for the server) counts: named, with the fix
            simulation_body(partition=_partition({"repo_id": "x/y", "root": str(TWO_CAMERAS)})),
            "partition.holdout_episodes",
            ["has 2 episodes", "needs at least 3 (2 clients + 1 held out", "at most 0"],
        ),
        (
            simulation_body(
                min_clients=3,
                partition={
                    "dataset": {"repo_id": "x/y", "root": str(TWO_CAMERAS)},
                    "num_clients": 3,
                    "holdout_episodes": 0,
                },
            ),
            "partition.num_clients",
            ["has 2 episodes", "needs at least 3 (3 clients + 0 held out"],
        ),
        (
            simulation_body(
                partition=_partition(
                    {"repo_id": "x/y", "root": str(TWO_CAMERAS)}, scheme="task", holdout_episodes=0
                )
            ),
            "partition.scheme",
            ["has 1 tasks, too few", "fix: scheme 'iid' or at most 1 clients"],
        ),
        (
            simulation_body(
                partition=_partition({"repo_id": "x/y", "root": str(PICK), "episodes": [0, 7]})
            ),
            "partition.dataset.episodes",
            ["has no episodes [7] (it has 4"],
        ),
        (
            simulation_body(
                partition=None,
                client_datasets=[
                    {"repo_id": "test/so100_pick"},
                    {"repo_id": "x/y", "root": str(TWO_CAMERAS)},
                ],
            ),
            "client_datasets.1",
            [
                "camera 'observation.images.top' is not in the experiment",
                "rename the dataset's camera 'observation.images.top' to "
                "'observation.images.front'",
                "camera 'observation.images.wrist' is not in the experiment",
                "compared with client_datasets.0",
            ],
        ),
        (
            simulation_body(eval_datasets=[{"repo_id": "test/two_cameras"}]),
            "eval_datasets.0",
            [
                "camera 'observation.images.top' is not in the experiment",
                "rename the dataset's camera 'observation.images.top' to "
                "'observation.images.front'",
            ],
        ),
        (
            simulation_body(policy="lab/not_a_cached_policy"),
            "policy",
            ["not in the local Hugging Face cache", "hf download lab/not_a_cached_policy"],
        ),
        (
            simulation_body(policy="/nonexistent/pretrained_model"),
            "policy",
            ["missing config.json, model.safetensors"],
        ),
        (  # found by the fuzzer: a name longer than any file name is a 422, not a 500
            simulation_body(policy="0" * 500),
            "policy",
            ["not a path this server can look up (file name too long)"],
        ),
        (
            simulation_body(partition=_partition({"repo_id": "x/y", "root": "/" + "d" * 300})),
            "partition.dataset",
            ["not a path this server can look up (file name too long)"],
        ),
    ],
)
def test_create_refuses_what_the_worker_could_not_run(
    client: TestClient, world: World, body: dict[str, Any], field: str, words: list[str]
) -> None:
    problems = _refusal(client, world, body)

    assert field in problems, problems
    for word in words:
        assert word in problems[field], problems[field]
    assert "HF_HUB_OFFLINE" not in json.dumps(problems)


def test_a_valid_split_of_a_real_dataset_is_accepted(client: TestClient, world: World) -> None:
    admin = bearer(world.secrets["admin"] or "")
    body = simulation_body(
        partition=_partition({"repo_id": "x/y", "root": str(PICK)}, holdout_episodes=1),
        eval_datasets=[{"repo_id": "test/so100_pick", "episodes": [3]}],
    )

    response = client.post(API, json=body, headers=admin)

    assert response.status_code == 201, response.text


def test_launch_refuses_data_that_went_away(
    client: TestClient, world: World, tmp_path: Path
) -> None:
    admin = bearer(world.secrets["admin"] or "")
    root = shutil.copytree(PICK, tmp_path / "so100")
    body = simulation_body(partition=_partition({"repo_id": "x/y", "root": str(root)}))
    created = client.post(API, json=body, headers=admin)
    assert created.status_code == 201, created.text
    shutil.rmtree(root)

    launched = client.post(f"{API}/{created.json()['id']}/runs", headers=admin)

    assert launched.status_code == 409, launched.text
    assert launched.json()["detail"] == "The experiment's policy or data cannot be used now"
    [problem] = launched.json()["errors"]
    assert problem["field"] == "partition.dataset.root"
    assert f"no folder {root}" in problem["reason"]


@pytest.mark.slow
def test_the_kept_datasets_are_what_the_helper_writes(tmp_path: Path) -> None:
    write(tmp_path)

    for repo_id in SPECS:
        kept = json.loads((root_of(repo_id) / "meta" / "info.json").read_text())
        fresh = json.loads((tmp_path / repo_id / "meta" / "info.json").read_text())
        assert kept == fresh, f"run python -m tests.datasets to rewrite {repo_id}"

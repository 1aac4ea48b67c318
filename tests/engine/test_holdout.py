"""Which episodes each client keeps back for federated evaluation (no dataset is opened: the
clients list their episodes)."""

import pytest

from fedvla.core.experiment_config import DatasetRef, FederationConfig, evaluation_of
from fedvla.engine.data.partition import client_split, kept_back, plan_data


@pytest.mark.parametrize(
    ("count", "fraction", "kept"),
    [(0, 0.1, 0), (1, 0.1, 0), (2, 0.1, 1), (10, 0.1, 1), (11, 0.1, 2), (4, 0.9, 3), (5, 0.0, 0)],
)
def test_a_fraction_rounded_up_at_least_one_of_two_never_all(
    count: int, fraction: float, kept: int
) -> None:
    assert kept_back(count, fraction) == kept


def _clients(*episodes: list[int], **changes: object) -> FederationConfig:
    refs = [
        DatasetRef(repo_id=f"lab/{i}", root=f"/d/{i}", episodes=e) for i, e in enumerate(episodes)
    ]
    return FederationConfig(policy="tiny", min_clients=1, client_datasets=refs, **changes)  # type: ignore[arg-type]


def test_each_client_keeps_its_own_episodes_back_disjoint_and_reproducible() -> None:
    config = _clients(list(range(10)), [3], [5, 6])
    plan = plan_data(config)

    assert plan.holdout == []  # one dataset per client: the server has only eval_datasets
    first, single, pair = zip(plan.clients, plan.client_eval, strict=True)
    assert first[1] is not None and len(first[1].episodes or []) == 1
    assert sorted((first[0].episodes or []) + (first[1].episodes or [])) == list(range(10))
    assert single == (config.client_datasets[1], None)  # one episode: it trains on it
    assert pair[1] is not None and len(pair[0].episodes or []) == 1
    assert plan_data(config) == plan  # seeded: every process (and the site) splits alike
    again = client_split(config.client_datasets[0], 0.1, seed=config.seed, label="client-0")
    assert again == first


def test_evaluation_off_keeps_nothing_back_and_says_so() -> None:
    config = _clients(list(range(10)), eval_every=0)
    plan = plan_data(config)
    assert plan.client_eval == [None] and plan.clients == config.client_datasets
    evaluation = evaluation_of(config)
    assert not evaluation.enabled and evaluation.best_checkpoint_by == "last round"
    assert evaluation.summary.startswith("Evaluation is off (eval_every is 0)")


def test_what_an_experiment_evaluates_by_default() -> None:
    with_clients = evaluation_of(_clients([0, 1]))
    assert (with_clients.server, with_clients.federated) == (False, True)
    assert with_clients.best_checkpoint_by == "federated eval loss"
    nothing_held = evaluation_of(_clients([0, 1], client_holdout_fraction=0.0))
    assert not nothing_held.enabled and "nothing is held out" in nothing_held.summary

"""The Flower side of the one definition of an experiment: pyproject's run config names every
setting and nothing else, and every strategy an experiment may name is registered."""

import tomllib
from pathlib import Path

from flwr.serverapp.strategy import FedAdam, FedProx

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition, Strategy
from fedvla.engine.federation.run_config import (
    ENGINE_KEYS,
    federation_config_from_run_config,
    kebab,
)
from fedvla.engine.federation.strategy import STRATEGIES, TrackedStrategy, make_strategy

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _app_config() -> dict[str, object]:
    with PYPROJECT.open("rb") as file:
        table: dict[str, object] = tomllib.load(file)["tool"]["flwr"]["app"]["config"]
    return table


def test_pyproject_run_config_has_a_key_for_every_setting_and_nothing_else() -> None:
    keys = set(_app_config())

    assert keys == {kebab(name) for name in FederationConfig.model_fields} | set(ENGINE_KEYS)


def test_pyproject_run_config_is_a_valid_federation() -> None:
    config = federation_config_from_run_config(_app_config())

    assert config.policy == "tiny"
    assert config.partition is not None and config.num_clients == config.partition.num_clients


def test_every_strategy_an_experiment_may_name_is_registered() -> None:
    assert set(STRATEGIES) == set(Strategy)


def test_each_strategy_gets_its_own_setting() -> None:
    partition = Partition(dataset=DatasetRef(repo_id="x/y"), num_clients=2)
    base = FederationConfig(policy="tiny", partition=partition, min_clients=2)
    prox = make_strategy(
        base.model_copy(update={"strategy": Strategy.fedprox, "proximal_mu": 0.3}), round_offset=0
    )
    adam = make_strategy(
        base.model_copy(update={"strategy": Strategy.fedadam, "server_learning_rate": 0.02}),
        round_offset=2,
    )
    plain = make_strategy(base, round_offset=0)

    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.3
    assert isinstance(adam, FedAdam) and adam.eta == 0.02 and adam.round_offset == 2
    assert isinstance(plain, TrackedStrategy)
    assert not isinstance(plain, FedProx | FedAdam)
    assert plain.min_train_nodes == 2

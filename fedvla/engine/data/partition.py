"""Which data each simulated client trains on, and which the server holds out."""

import random
from dataclasses import dataclass

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.data.features import DatasetError, describe, open_metadata


@dataclass(frozen=True)
class DataPlan:
    clients: list[DatasetRef]
    """One per simulated client, in partition-id order."""
    holdout: list[DatasetRef]
    """What the server evaluates on."""


def client_label(partition_id: int) -> str:
    return f"client-{partition_id}"


def plan_data(config: FederationConfig) -> DataPlan:
    """Client datasets and the server's held-out data (deployment: sites bring their own)."""
    if config.mode == "deployment":
        return DataPlan([], list(config.eval_datasets))
    if config.partition is None:
        return DataPlan(list(config.client_datasets), list(config.eval_datasets))
    clients, holdout = split_partition(config.partition, seed=config.seed)
    return DataPlan(clients, list(config.eval_datasets) + holdout)


def split_partition(
    partition: Partition, *, seed: int
) -> tuple[list[DatasetRef], list[DatasetRef]]:
    """Deal a dataset's episodes to clients (at random, or whole tasks each); hold some back."""
    ref = partition.dataset
    meta = open_metadata(ref, "partition")
    episodes = list(ref.episodes) if ref.episodes is not None else list(range(meta.total_episodes))
    rng = random.Random(seed)
    rng.shuffle(episodes)
    needed = partition.num_clients + partition.holdout_episodes
    if len(episodes) < needed:
        raise DatasetError(
            f"partition: dataset {describe(ref)} has {len(episodes)} episodes, needs at least "
            f"{needed} ({partition.num_clients} clients + {partition.holdout_episodes} held out)"
        )
    held = sorted(episodes[: partition.holdout_episodes])
    rest = episodes[partition.holdout_episodes :]
    if partition.scheme == "iid":
        shares = [sorted(rest[i :: partition.num_clients]) for i in range(partition.num_clients)]
    else:
        shares = _deal_by_task(rest, _episode_tasks(meta), partition.num_clients, ref)
    clients = [ref.model_copy(update={"episodes": share}) for share in shares]
    holdout = [ref.model_copy(update={"episodes": held})] if held else []
    return clients, holdout


def _episode_tasks(meta) -> dict[int, str]:  # type: ignore[no-untyped-def]
    table = meta.episodes
    return {
        int(index): str(tasks[0])
        for index, tasks in zip(table["episode_index"], table["tasks"], strict=True)
    }


def _deal_by_task(
    episodes: list[int], tasks: dict[int, str], num_clients: int, ref: DatasetRef
) -> list[list[int]]:
    names = sorted({tasks[e] for e in episodes})
    if len(names) < num_clients:
        raise DatasetError(
            f"partition: dataset {describe(ref)} has {len(names)} tasks, too few for "
            f"{num_clients} clients split by task"
        )
    shares: list[list[int]] = [[] for _ in range(num_clients)]
    for position, name in enumerate(names):
        shares[position % num_clients].extend(e for e in episodes if tasks[e] == name)
    return [sorted(share) for share in shares]

"""Which data each simulated client trains on, and which the server holds out."""

import math
import random
from dataclasses import dataclass, field

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.data.features import DatasetError, describe, open_metadata


@dataclass(frozen=True)
class DataPlan:
    clients: list[DatasetRef]
    """One per simulated client, in partition-id order."""
    holdout: list[DatasetRef]
    """What the server evaluates on."""
    client_eval: list[DatasetRef | None] = field(default_factory=list)
    """Simulation: client i's own held-out episodes (federated evaluation), None where it keeps
    none back; clients[i] then lists only the episodes it trains on. Deployment: empty (each site
    splits its own dataset with client_split)."""


def client_label(partition_id: int) -> str:
    return f"client-{partition_id}"


def plan_data(config: FederationConfig) -> DataPlan:
    """Client datasets and the server's held-out data (deployment: sites bring their own)."""
    if config.mode == "deployment":
        return DataPlan([], list(config.eval_datasets))
    if config.partition is None:
        whole, holdout = list(config.client_datasets), list(config.eval_datasets)
    else:
        whole, held = split_partition(config.partition, seed=config.seed)
        holdout = list(config.eval_datasets) + held
    splits = [
        client_split(ref, client_holdout(config), seed=config.seed, label=client_label(i))
        for i, ref in enumerate(whole)
    ]
    return DataPlan([train for train, _ in splits], holdout, [held for _, held in splits])


def client_holdout(config: FederationConfig) -> float:
    """The fraction of its episodes each client keeps back: none when evaluation is off."""
    return config.client_holdout_fraction if config.eval_every > 0 else 0.0


def kept_back(count: int, fraction: float) -> int:
    """How many of a client's `count` episodes it keeps back for federated evaluation: the
    fraction rounded up, at least one when it has 2 or more, never all of them."""
    if fraction <= 0 or count < 2:
        return 0
    return min(count - 1, max(1, math.ceil(fraction * count)))


def client_split(
    ref: DatasetRef, fraction: float, *, seed: int, label: str
) -> tuple[DatasetRef, DatasetRef | None]:
    """A client's dataset split into the episodes it trains on and those it keeps back for
    federated evaluation (chosen at random, seeded by the experiment and the client's label,
    so every process computes the same split); None: it keeps none back."""
    if fraction <= 0:
        return ref, None
    if ref.episodes is not None:
        episodes = sorted(set(ref.episodes))
    else:
        episodes = list(range(open_metadata(ref, label).total_episodes))
    count = kept_back(len(episodes), fraction)
    if count == 0:
        return ref, None
    held = sorted(random.Random(f"{seed}|{label}|holdout").sample(episodes, count))
    train = [e for e in episodes if e not in set(held)]
    return ref.model_copy(update={"episodes": train}), ref.model_copy(update={"episodes": held})


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

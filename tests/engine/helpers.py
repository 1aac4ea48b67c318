"""Building blocks the engine tests share."""

from pathlib import Path

from fedvla.core.experiment_config import DatasetRef
from fedvla.engine.federation import task
from fedvla.engine.policy.loading import resolve_policy_source

TINY_CHUNK = 4
"""The tiny policy's action chunk length."""


def tiny_bundle(
    data_dir: Path, ref: DatasetRef, owner: str = "test"
) -> tuple[task.PolicyBundle, task.ClientData]:
    """The tiny policy built for a dataset, normalising with that dataset's statistics."""
    data = task.open_dataset(ref, chunk_size=TINY_CHUNK, owner=owner)
    bundle = task.build_bundle(
        resolve_policy_source("tiny"),
        data.features,
        stats=data.stats,
        data_dir=data_dir,
        seed=0,
        device="cpu",
    )
    return bundle, data

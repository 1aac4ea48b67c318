"""Normalisation statistics of exactly the frames a client trains on.

A LeRobot dataset's meta/stats.json describes every episode of the dataset, held-out ones
included; a client opened on some of its episodes must not normalise with it. These statistics
are computed from the frames the client's dataset holds (only its episodes), with lerobot's own
compute_episode_stats, so they have the fields, shapes and quantiles that lerobot's
processors and aggregate_stats expect.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedvla.engine.data.features import DatasetError

if TYPE_CHECKING:
    import pyarrow as pa
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

Stats = dict[str, dict[str, np.ndarray]]


def frame_stats(dataset: "LeRobotDataset", keys: Sequence[str]) -> Stats:
    """Statistics of the numeric features `keys` over every frame of `dataset` (its episodes
    only), one row per frame: `count` is the number of frames."""
    from lerobot.datasets.compute_stats import compute_episode_stats

    table = dataset.hf_dataset.select_columns(list(keys)).with_format("arrow")[:]
    columns: dict[str, np.ndarray] = {}
    for key in keys:
        values = _as_rows(table.column(key).combine_chunks())
        if len(values) == 0:
            raise DatasetError(f"dataset {dataset.repo_id} has no frames to compute {key} from")
        columns[key] = values
    stats: Stats = compute_episode_stats(columns, dataset.meta.features)
    return stats


def _as_rows(column: "pa.Array") -> np.ndarray:
    """An Arrow column of vectors as a (frames, dim) float64 array (no per-row conversion)."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(column.type):
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(column), -1).astype(np.float64)
    return np.stack(column.to_numpy(zero_copy_only=False)).astype(np.float64)

"""Check, before training, that a client's dataset exists and fits the experiment."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedvla.core.experiment_config import DatasetRef

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

STATE_KEY = "observation.state"
ACTION_KEY = "action"


class DatasetError(ValueError):
    """A dataset is missing, unreadable, or does not match the experiment."""


@dataclass(frozen=True)
class DatasetFeatures:
    """What the experiment needs every dataset to agree on."""

    state_dim: int
    action_dim: int
    cameras: tuple[str, ...]
    fps: int

    def mismatches(self, other: "DatasetFeatures") -> list[str]:
        found = []
        if other.state_dim != self.state_dim:
            found.append(f"state dim {other.state_dim}, expected {self.state_dim}")
        if other.action_dim != self.action_dim:
            found.append(f"action dim {other.action_dim}, expected {self.action_dim}")
        if other.cameras != self.cameras:
            found.append(f"cameras {list(other.cameras)}, expected {list(self.cameras)}")
        if other.fps != self.fps:
            found.append(f"fps {other.fps}, expected {self.fps}")
        return found


def describe(ref: DatasetRef) -> str:
    return f"{ref.repo_id} at {ref.root}" if ref.root else ref.repo_id


def open_metadata(ref: DatasetRef, owner: str) -> "LeRobotDatasetMetadata":
    """The dataset's metadata, read offline; DatasetError naming the owner if unreadable."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    if ref.root is not None and not Path(ref.root).is_dir():
        raise DatasetError(f"{owner}: dataset {describe(ref)} is missing (no such folder)")
    try:
        return LeRobotDatasetMetadata(ref.repo_id, root=ref.root)
    except Exception as error:  # lerobot raises many kinds for an unreadable dataset
        raise DatasetError(
            f"{owner}: dataset {describe(ref)} is unreadable: {type(error).__name__}: {error}"
        ) from error


def features_of(meta: "LeRobotDatasetMetadata", ref: DatasetRef, owner: str) -> DatasetFeatures:
    features = meta.features
    for key in (STATE_KEY, ACTION_KEY):
        if key not in features:
            raise DatasetError(f"{owner}: dataset {describe(ref)} has no {key!r} feature")
    return DatasetFeatures(
        state_dim=int(features[STATE_KEY]["shape"][0]),
        action_dim=int(features[ACTION_KEY]["shape"][0]),
        cameras=tuple(sorted(meta.camera_keys)),
        fps=int(meta.fps),
    )


def check_dataset(ref: DatasetRef, owner: str, expected: DatasetFeatures | None) -> DatasetFeatures:
    """Features of the dataset; DatasetError naming owner, dataset and mismatch if it differs."""
    meta = open_metadata(ref, owner)
    if ref.episodes is not None:
        outside = [e for e in ref.episodes if not 0 <= e < meta.total_episodes]
        if outside:
            raise DatasetError(
                f"{owner}: dataset {describe(ref)} has no episodes {outside} "
                f"(it has {meta.total_episodes})"
            )
    found = features_of(meta, ref, owner)
    if expected is not None:
        mismatches = expected.mismatches(found)
        if mismatches:
            raise DatasetError(
                f"{owner}: dataset {describe(ref)} does not match the experiment: "
                + "; ".join(mismatches)
            )
    return found

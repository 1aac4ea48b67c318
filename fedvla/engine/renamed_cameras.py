"""The ClientApp's dataset with its cameras renamed (node config ``camera-map``).

Imports torch (through fedvla.engine.federation.task): the web app imports only camera_map.
"""

from dataclasses import dataclass
from typing import Any

from fedvla.engine.data.features import DatasetError
from fedvla.engine.federation.task import ClientData, SkippingDataset


class RenamedCameras(SkippingDataset):
    """The site's dataset, its frames' camera keys renamed."""

    def __init__(self, inner: SkippingDataset, mapping: dict[str, str]) -> None:
        super().__init__(inner.dataset)
        self.inner = inner
        self.mapping = mapping

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.inner[index]
        self.skipped = self.inner.skipped
        return {self.mapping.get(key, key): value for key, value in item.items()}


@dataclass
class RenamedClientData(ClientData):
    mapping: dict[str, str] | None = None

    @property
    def features(self) -> dict[str, Any]:
        mapping = self.mapping or {}
        return {mapping.get(k, k): v for k, v in super().features.items()}

    @property
    def camera_keys(self) -> list[str]:
        mapping = self.mapping or {}
        return [mapping.get(k, k) for k in super().camera_keys]


def apply_camera_map(data: ClientData, mapping: dict[str, str]) -> ClientData:
    """``data`` with its cameras renamed; DatasetError if a mapped camera is not in it."""
    if not mapping:
        return data
    cameras = set(data.dataset.dataset.meta.camera_keys)
    missing = sorted(set(mapping) - cameras)
    if missing:
        raise DatasetError(
            f"camera-map names cameras the dataset lacks: {missing} (it has {sorted(cameras)})"
        )
    stats = {mapping.get(k, k): v for k, v in data.stats.items()}
    return RenamedClientData(
        data.ref, RenamedCameras(data.dataset, mapping), stats, mapping=mapping
    )

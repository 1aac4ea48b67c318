"""Shared engine fixtures: the tiny VLM and synthetic datasets, generated once per session."""

import os
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fedvla.core.experiment_config import DatasetRef
from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset
from fedvla.engine.policy.tiny import tiny_vlm_dir

REPO_ID = "synthetic/so100"
BASE = SyntheticSpec(repo_id=REPO_ID, episodes=9, frames_per_episode=16)


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="session")
def data_dir(engine_dir: Path) -> Path:
    folder = engine_dir / "data"
    tiny_vlm_dir(folder)
    return folder


def _make(engine_dir: Path, name: str, spec: SyntheticSpec) -> DatasetRef:
    root = engine_dir / "datasets" / name
    if not root.exists():
        generate_dataset(root, spec)
    return DatasetRef(repo_id=spec.repo_id, root=str(root))


@pytest.fixture(scope="session")
def make_dataset(engine_dir: Path):  # type: ignore[no-untyped-def]
    """Generate (once) a synthetic dataset: make_dataset(name, **SyntheticSpec changes)."""

    def make(name: str, **changes: object) -> DatasetRef:
        return _make(engine_dir, name, replace(BASE, **changes))  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def images_dataset(make_dataset) -> DatasetRef:  # type: ignore[no-untyped-def]
    return make_dataset("images")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def video_dataset(make_dataset) -> DatasetRef:  # type: ignore[no-untyped-def]
    return make_dataset(  # type: ignore[no-any-return]
        "video", use_videos=True, cameras=("front", "wrist"), episodes=3, seed=1
    )

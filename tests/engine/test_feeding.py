"""How a client's training is fed and computed: loader workers, uint8 frames, persistent feeds,
the sync-free loss and the frozen VLM in bf16 (on the CPU here; bench/gpu_throughput.py times
them on a GPU)."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from fedvla.core.experiment_config import DatasetRef
from fedvla.engine.data.loader import (
    LOADER_WORKERS_ENV,
    Feed,
    default_loader_workers,
    frames_to_float,
    loader_workers,
)
from fedvla.engine.federation import task
from fedvla.engine.policy.speed import flow_loss, hold_frozen_in_bf16
from tests.engine.helpers import TINY_CHUNK, tiny_bundle


@pytest.mark.parametrize(("cpus", "workers"), [(1, 0), (2, 0), (4, 1), (16, 7), (64, 8)])
def test_default_loader_workers_follow_the_cpu_count(cpus: int, workers: int) -> None:
    assert default_loader_workers(cpus) == workers


def test_loader_workers_setting_overrides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOADER_WORKERS_ENV, "3")
    assert loader_workers() == 3
    monkeypatch.setenv(LOADER_WORKERS_ENV, "0")
    assert loader_workers() == 0
    monkeypatch.setenv(LOADER_WORKERS_ENV, "-1")
    assert loader_workers() == default_loader_workers()


def test_uint8_video_frames_become_the_floats_lerobot_decodes(video_dataset: DatasetRef) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    data = task.open_dataset(video_dataset, chunk_size=TINY_CHUNK, owner="test")
    floats = LeRobotDataset(video_dataset.repo_id, root=video_dataset.root)
    compact = data.dataset[7]
    assert compact["observation.images.front"].dtype == torch.uint8
    expanded = frames_to_float(dict(compact), data.camera_keys)
    for key in ("observation.images.front", "observation.images.wrist"):
        assert torch.equal(expanded[key], floats[7][key])


def test_feed_and_its_workers_last_across_rounds(
    data_dir: Path, images_dataset: DatasetRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOADER_WORKERS_ENV, "1")
    bundle, data = tiny_bundle(data_dir, images_dataset)
    try:
        task.train(bundle, data, steps=2, batch_size=4, learning_rate=1e-3, seed=1)
        feed = data.feed
        assert feed is not None and feed.workers == 1
        workers = [w.pid for w in feed._iterator._workers]  # type: ignore[union-attr]
        task.train(bundle, data, steps=2, batch_size=4, learning_rate=1e-3, seed=2)
        assert data.feed is feed
        assert [w.pid for w in feed._iterator._workers] == workers  # type: ignore[union-attr]
        assert all(w.is_alive() for w in feed._iterator._workers)  # type: ignore[union-attr]
    finally:
        data.close()
    assert data.feed is None


class _Numbers(torch.utils.data.Dataset[torch.Tensor]):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_feeds_batch_k_is_the_same_whichever_feed_gives_it_and_after_a_seek(
    workers: int,
) -> None:
    """A client may train round r in a process whose feed never gave it rounds 1..r-1."""
    first = Feed(_Numbers(), batch_size=3, seed=5, workers=workers, pin=False)
    other = Feed(_Numbers(), batch_size=3, seed=5, workers=workers, pin=False)
    try:
        sequence = [first.next().tolist() for _ in range(9)]  # 4 batches an epoch, the 4th short
        other.seek(5)
        later = [other.next().tolist() for _ in range(4)]
        other.seek(2)  # back: the (persistent) iterator restarts there
        again = [other.next().tolist() for _ in range(2)]
    finally:
        first.close()
        other.close()

    assert later == sequence[5:9] and again == sequence[2:4]
    assert sorted(i for batch in sequence[:4] for i in batch) == list(range(10))  # a permutation
    assert sequence[4:8] != sequence[:4]  # and the next is shuffled anew


def _first_batch(bundle: task.PolicyBundle, data: task.ClientData) -> dict[str, Any]:
    raw = next(iter(DataLoader(data.dataset, batch_size=4)))
    return frames_to_float(bundle.preprocessor(raw), data.camera_keys)


def test_loss_without_host_sync_equals_lerobots_loss(
    data_dir: Path, images_dataset: DatasetRef
) -> None:
    bundle, data = tiny_bundle(data_dir, images_dataset)
    batch = _first_batch(bundle, data)
    torch.manual_seed(3)
    ours = flow_loss(bundle.policy, dict(batch))
    torch.manual_seed(3)
    theirs, _ = bundle.policy.forward(dict(batch))
    assert torch.equal(ours, theirs)


def test_frozen_vlm_in_bf16_keeps_trainable_weights_float32(
    data_dir: Path, images_dataset: DatasetRef
) -> None:
    bundle, data = tiny_bundle(data_dir, images_dataset)
    batch = _first_batch(bundle, data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(3)
        before = float(flow_loss(bundle.policy, dict(batch)).detach())
        cast = hold_frozen_in_bf16(bundle.policy)
        torch.manual_seed(3)
        after = flow_loss(bundle.policy, dict(batch))
    params = list(bundle.policy.parameters())
    assert cast == sum(1 for p in params if not p.requires_grad) > 0
    assert all(p.dtype == torch.float32 for p in params if p.requires_grad)
    assert all(p.dtype == torch.bfloat16 for p in params if not p.requires_grad)
    after.backward()
    assert after.item() == pytest.approx(before, rel=0.05)
    assert any(p.grad is not None for p in params if p.requires_grad)

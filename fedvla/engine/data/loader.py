"""Feeding a client's training the way lerobot-train feeds it, and a little better.

DataLoader worker processes decode video beside the training loop, batches come in pinned
memory (lerobot's device step then copies them without blocking), frames travel as uint8 and
become floats on the device (a quarter of the bytes through shared memory, pinning and the bus),
and one loader with persistent workers serves a client for the whole run: its iterator cycles
across rounds instead of being rebuilt each round.
"""

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

LOADER_WORKERS_ENV = "FEDVLA_LOADER_WORKERS"
"""DataLoader worker processes per client loader; unset or negative: from the CPU count."""
MAX_DEFAULT_WORKERS = 8
PREFETCH_BATCHES = 4
"""Batches each worker decodes ahead (lerobot-train's default is 2)."""


def default_loader_workers(cpus: int | None = None) -> int:
    """Half the CPUs less one (the training loop and its pin thread need the rest), at most 8:
    0 on a 2-CPU machine, where the loop decodes inline, 7 on 16 CPUs."""
    count = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(0, min(MAX_DEFAULT_WORKERS, count // 2 - 1))


def loader_workers() -> int:
    """The worker count this process uses: FEDVLA_LOADER_WORKERS, else the CPU count's default."""
    raw = os.environ.get(LOADER_WORKERS_ENV, "").strip()
    if raw:
        value = int(raw)
        if value >= 0:
            return value
    return default_loader_workers()


class Feed:
    """One client's training batches: a shuffling loader whose iterator lasts across rounds.

    The order is seeded once (the first round's seed); each epoch reshuffles from the same
    generator, so a client fed by one process sees the same batches for the same seed.
    """

    def __init__(
        self, dataset: Dataset[Any], *, batch_size: int, seed: int, workers: int, pin: bool
    ) -> None:
        self.batch_size = batch_size
        self.workers = workers
        self.loader: DataLoader[Any] = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        )
        self._iterator: Iterator[dict[str, Any]] | None = None

    def next(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)  # persistent workers are reused
            return next(self._iterator)

    def close(self) -> None:
        """Stop the worker processes now rather than when the loader is collected."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def frames_to_float(batch: dict[str, Any], camera_keys: Sequence[str]) -> dict[str, Any]:
    """uint8 frames to floats in [0, 1] where they are (on the device after the preprocessor)."""
    for key in camera_keys:
        frames = batch.get(key)
        if isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8:
            batch[key] = frames.to(torch.float32).div_(255.0)
    return batch

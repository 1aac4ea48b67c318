"""Feeding a client's training the way lerobot-train feeds it, and a little better.

DataLoader worker processes decode video beside the training loop, batches come in pinned
memory (lerobot's device step then copies them without blocking), frames travel as uint8 and
become floats on the device (a quarter of the bytes through shared memory, pinning and the bus),
and one loader with persistent workers serves a client for the whole run: its iterator cycles
across rounds instead of being rebuilt each round.

A client's batches are one endless sequence fixed by its seed alone: batch k is the same in
whichever process serves the client (simulation hands a client to any free actor), so a round's
training depends on the client and the round, not on the process that ran its earlier rounds.
"""

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


class EpochBatches(Sampler[list[int]]):
    """Batches of an endless run of epochs, epoch e shuffled by seed + e (the last batch of an
    epoch may be short), iterated from batch `start`."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.start = 0

    @property
    def per_epoch(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, first = divmod(self.start, self.per_epoch)
        while True:
            shuffled = torch.randperm(
                self.size, generator=torch.Generator().manual_seed(self.seed + epoch)
            ).tolist()
            for index in range(first, self.per_epoch):
                yield shuffled[index * self.batch_size : (index + 1) * self.batch_size]
            epoch, first = epoch + 1, 0


class Feed:
    """One client's training batches (EpochBatches of its seed), from a loader whose iterator lasts
    across rounds: only a seek elsewhere than where the last batch left it restarts it."""

    def __init__(
        self, dataset: Dataset[Any], *, batch_size: int, seed: int, workers: int, pin: bool
    ) -> None:
        self.batch_size = batch_size
        self.workers = workers
        self.batches = EpochBatches(len(dataset), batch_size, seed)  # type: ignore[arg-type]
        self.position = 0
        """The index of the batch the next call of next() returns."""
        self.loader: DataLoader[Any] = DataLoader(
            dataset,
            batch_sampler=self.batches,
            # Workers' seeds come from here, not from the global generator: taking them must
            # not move the random stream the training seeds for its noise.
            generator=torch.Generator().manual_seed(seed),
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        )
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._iterator_at = 0
        """The index of the batch the iterator yields next."""

    def seek(self, position: int) -> None:
        """Make batch `position` the next one."""
        self.position = position

    def next(self) -> dict[str, Any]:
        if self._iterator is None or self._iterator_at != self.position:
            self.batches.start = self._iterator_at = self.position
            self._iterator = iter(self.loader)  # persistent workers are reused
        batch: dict[str, Any] = next(self._iterator)
        self.position = self._iterator_at = self.position + 1
        return batch

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

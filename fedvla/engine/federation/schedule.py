"""The clients' learning rate across a federation: one schedule over its global steps.

Round r's local step i is global step (r - 1) x local_steps + i, so the warmup happens once, in
the first rounds, and the decay spans the whole federation, as lerobot-train's schedule spans its
whole training. The cosine schedule is lerobot's own (CosineDecayWithWarmupSchedulerConfig, the
SmolVLA preset), including its rule for short trainings: fewer global steps than decay_steps
shorten the warmup and the decay in proportion.

The optimizer's state is a documented choice (FederationConfig.optimizer_state). By default
("fresh") each round starts a new AdamW at the client, as FedAvg's local solvers do: moments kept
from a client's previous round describe weights the aggregation has since replaced, and they cost
two copies of the trainable weights per client. "kept" carries each client's moments and step
count from round to round within a run. Measured on the SO-101-format learning benchmark
(bench/results/learning_parity_so101.md), neither choice closes the gap to centralized training
on its own; the schedule, not the optimizer, carries the federation's progress.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from fedvla.core.experiment_config import FederationConfig


@dataclass(frozen=True)
class LearningRateSchedule:
    peak: float
    warmup_steps: int
    decay_steps: int
    decay_lr: float
    total_steps: int
    cosine: bool = True

    @classmethod
    def of(cls, config: FederationConfig) -> "LearningRateSchedule":
        return cls(
            peak=config.learning_rate,
            warmup_steps=config.warmup_steps,
            decay_steps=config.decay_steps,
            decay_lr=config.decay_learning_rate,
            total_steps=config.num_rounds * config.local_steps,
            cosine=config.lr_schedule == "cosine",
        )

    @classmethod
    def constant(cls, learning_rate: float) -> "LearningRateSchedule":
        return cls(learning_rate, 0, 1, learning_rate, 1, cosine=False)

    @cached_property
    def _factor(self) -> Callable[[int], float]:
        from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

        preset = CosineDecayWithWarmupSchedulerConfig(
            num_warmup_steps=self.warmup_steps,
            num_decay_steps=self.decay_steps,
            peak_lr=self.peak,
            decay_lr=self.decay_lr,
        )
        holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.peak)
        factor: Callable[[int], float] = preset.build(holder, self.total_steps).lr_lambdas[0]
        return factor

    def at(self, step: int) -> float:
        """The learning rate of global step `step` (0-based)."""
        return self.peak * self._factor(step) if self.cosine else self.peak

    @staticmethod
    def first_step(server_round: int, local_steps: int) -> int:
        return max(server_round - 1, 0) * local_steps

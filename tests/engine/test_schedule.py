"""The learning-rate schedule across a federation (issue 13, item 4): lerobot's SmolVLA preset over
the federation's global steps, continued from round to round by the clients."""

from pathlib import Path

import pytest
import torch
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
from pydantic import ValidationError

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.federation import task
from fedvla.engine.federation.schedule import LearningRateSchedule
from tests.engine.helpers import tiny_bundle

PARTITION = Partition(dataset=DatasetRef(repo_id="x/y"), num_clients=2)


def _config(**settings: object) -> FederationConfig:
    return FederationConfig(policy="tiny", partition=PARTITION, min_clients=2, **settings)  # type: ignore[arg-type]


def test_the_default_is_lerobots_smolvla_preset() -> None:
    config = _config()
    preset = SmolVLAConfig().get_scheduler_preset()

    assert config.lr_schedule == "cosine"
    assert config.learning_rate == SmolVLAConfig().optimizer_lr
    assert (config.warmup_steps, config.decay_steps, config.decay_learning_rate) == (
        preset.num_warmup_steps,
        preset.num_decay_steps,
        preset.decay_lr,
    )


def test_an_unknown_schedule_names_the_field() -> None:
    with pytest.raises(ValidationError) as raised:
        _config(lr_schedule="linear")

    assert raised.value.errors()[0]["loc"] == ("lr_schedule",)


def test_the_schedule_is_lerobots_own_stepped_through_a_whole_training() -> None:
    """The federation's rate at each global step is what lerobot-train's scheduler gives at that
    step of one training as long as the federation (here shorter than decay_steps: lerobot's
    proportional shortening applies)."""
    config = _config(num_rounds=5, local_steps=40, warmup_steps=1000, decay_steps=3000)
    schedule = LearningRateSchedule.of(config)
    preset = SmolVLAConfig(
        optimizer_lr=config.learning_rate,
        scheduler_warmup_steps=config.warmup_steps,
        scheduler_decay_steps=config.decay_steps,
        scheduler_decay_lr=config.decay_learning_rate,
    ).get_scheduler_preset()
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    scheduler = preset.build(optimizer, num_training_steps=200)

    for step in range(200):
        assert schedule.at(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9)
        optimizer.step()
        scheduler.step()
    rates = [schedule.at(step) for step in range(200)]
    assert rates[0] < rates[65] and max(rates) <= config.learning_rate  # warmup, once
    assert rates[199] < config.learning_rate / 10  # decayed by the federation's end


def test_rounds_continue_the_schedule_where_the_last_one_stopped() -> None:
    assert LearningRateSchedule.first_step(server_round=1, local_steps=10) == 0
    assert LearningRateSchedule.first_step(server_round=4, local_steps=10) == 30


def test_a_constant_schedule_keeps_the_learning_rate() -> None:
    schedule = LearningRateSchedule.of(_config(lr_schedule="constant", learning_rate=3e-3))

    assert {schedule.at(step) for step in (0, 5, 10_000)} == {3e-3}


def test_local_training_follows_the_schedule_from_its_first_global_step(
    data_dir: Path, images_dataset: DatasetRef
) -> None:
    config = _config(num_rounds=4, local_steps=3, learning_rate=1e-3, decay_learning_rate=1e-5)
    schedule = LearningRateSchedule.of(config)
    bundle, data = tiny_bundle(data_dir, images_dataset)

    first = task.train(bundle, data, steps=3, batch_size=4, learning_rate=schedule, seed=0)
    last = task.train(
        bundle,
        data,
        steps=3,
        batch_size=4,
        learning_rate=schedule,
        seed=1,
        first_step=LearningRateSchedule.first_step(4, config.local_steps),
    )

    assert first.learning_rate == pytest.approx(schedule.at(2))
    assert last.learning_rate == pytest.approx(schedule.at(11))
    assert last.learning_rate < first.learning_rate

"""Learning is real: FedAvg over 3 IID clients gets close to centralized training."""

from pathlib import Path

import pytest

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.data.partition import plan_data
from fedvla.engine.federation import task
from fedvla.engine.federation.runner import run_federation
from fedvla.engine.policy.loading import resolve_policy_source

from .test_federation import RecordingReporter

pytestmark = pytest.mark.slow

ROUNDS, LOCAL_STEPS, BATCH, LR = 8, 8, 8, 3e-3


def test_fedavg_reaches_centralized_eval_loss(make_dataset, data_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dataset: DatasetRef = make_dataset("learning", episodes=15)
    config = FederationConfig(
        policy="tiny",
        strategy="fedavg",
        num_rounds=ROUNDS,
        min_clients=3,
        local_steps=LOCAL_STEPS,
        batch_size=BATCH,
        learning_rate=LR,
        lr_schedule="constant",  # as the centralized training below: like for like
        eval_batches=4,
        eval_every=ROUNDS,
        client_holdout_fraction=0.0,  # about learning: the clients train on all they have
        checkpoint_every=0,
        partition=Partition(dataset=dataset, num_clients=3, scheme="iid", holdout_episodes=3),
    )
    reporter = RecordingReporter()
    run_federation(config, reporter, output_dir=tmp_path, data_dir=data_dir)
    initial, federated = reporter.rounds[0].eval_loss, reporter.rounds[-1].eval_loss
    assert initial is not None and federated is not None

    # Centralized: the same policy, seed and held-out data; all clients' episodes pooled;
    # as many gradient steps as the three clients took together.
    plan = plan_data(config)
    pooled = sorted(e for client in plan.clients for e in client.episodes or [])
    train_data = task.open_dataset(
        dataset.model_copy(update={"episodes": pooled}), chunk_size=4, owner="centralized"
    )
    holdout = task.open_dataset(plan.holdout[0], chunk_size=4, owner="held out")
    stats = task.merge_stats(
        [task.open_dataset(c, chunk_size=4, owner="client").stats for c in plan.clients]
    )
    bundle = task.build_bundle(
        resolve_policy_source("tiny"),
        train_data.features,
        stats=stats,
        data_dir=data_dir,
        seed=config.seed,
        device="cpu",
    )
    start = task.evaluate(bundle, holdout, batches=4, batch_size=BATCH, seed=config.seed).loss
    assert start == pytest.approx(initial)  # the same starting point and evaluation
    task.train(
        bundle,
        train_data,
        steps=3 * ROUNDS * LOCAL_STEPS,
        batch_size=BATCH,
        learning_rate=LR,
        seed=config.seed,
    )
    centralized = task.evaluate(bundle, holdout, batches=4, batch_size=BATCH, seed=config.seed).loss

    assert centralized < 0.6 * initial  # the task is learnable
    assert federated < 0.6 * initial
    assert federated <= 1.15 * centralized

"""Real Flower simulations (Ray) with the tiny policy on synthetic data."""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition, ResumePoint
from fedvla.engine.data.features import DatasetError
from fedvla.engine.data.partition import plan_data
from fedvla.engine.federation import runner, task
from fedvla.engine.federation.checkpoints import (
    ROUND_FILE,
    SERVER_STATE_FILE,
    load_server_state,
    sha256_of,
)
from fedvla.engine.federation.reporter import CheckpointReport, RoundReport
from fedvla.engine.federation.runner import run_federation
from fedvla.engine.policy.loading import trainable_state
from tests.engine.helpers import tiny_bundle

pytestmark = pytest.mark.slow


@dataclass
class RecordingReporter:
    """Keeps what the engine reports, as the Celery worker's reporter would store it."""

    logs: list[str] = field(default_factory=list)
    rounds: list[RoundReport] = field(default_factory=list)
    saved: list[CheckpointReport] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)

    def log(self, message: str) -> None:
        self.logs.append(message)

    def round_finished(self, report: RoundReport) -> None:
        self.rounds.append(report)

    def checkpoint_saved(self, report: CheckpointReport) -> None:
        self.saved.append(report)

    def checkpoint_removed(self, round: int) -> None:
        self.removed.append(round)


def _config(dataset: DatasetRef, **changes: Any) -> FederationConfig:
    fields: dict[str, Any] = {
        "policy": "tiny",
        "num_rounds": 2,
        "min_clients": 3,
        "local_steps": 3,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "eval_batches": 1,
        "keep_checkpoints": 1,
        "partition": Partition(dataset=dataset, num_clients=3, holdout_episodes=2),
    }
    fields.update(changes)
    return FederationConfig(**fields)


def _run(config: FederationConfig, out: Path, data_dir: Path) -> RecordingReporter:
    reporter = RecordingReporter()
    run_federation(config, reporter, output_dir=out, data_dir=data_dir)
    return reporter


@pytest.fixture(scope="module")
def fedavg_run(
    images_dataset: DatasetRef, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RecordingReporter, Path, FederationConfig]:
    out = tmp_path_factory.mktemp("fedavg")
    config = _config(images_dataset)
    return _run(config, out, data_dir), out, config


def _trainable_bytes(data_dir: Path, dataset: DatasetRef) -> tuple[int, int]:
    bundle, _data = tiny_bundle(data_dir, dataset, "t")
    trainable = sum(t.numel() * 4 for t in trainable_state(bundle.policy).values())
    total = sum(t.numel() * t.element_size() for t in bundle.policy.state_dict().values())
    return trainable, total


def test_rounds_report_clients_losses_and_bytes(
    fedavg_run: tuple[RecordingReporter, Path, FederationConfig],
    data_dir: Path,
    images_dataset: DatasetRef,
) -> None:
    reporter, _, _ = fedavg_run
    assert [r.round for r in reporter.rounds] == [0, 1, 2]
    initial = reporter.rounds[0]
    assert initial.eval_loss is not None and initial.clients == [] and initial.train_loss is None
    assert initial.fed_eval_loss is None  # Flower asks the clients after a round's training
    trainable, total = _trainable_bytes(data_dir, images_dataset)
    for report in reporter.rounds[1:]:
        assert report.eval_loss is not None and report.train_loss is not None
        assert [c.client for c in report.clients] == ["client-0", "client-1", "client-2"]
        assert report.clients_succeeded == 3 and report.clients_failed == 0
        for client in report.clients:
            assert client.ok and client.samples == 3 * 4 and client.episodes >= 1
            assert client.site_id is None and client.skipped_frames == 0
            assert client.train_loss is not None and client.train_loss > 0
            # Only the trainable weights travel (values plus a little framing), never the VLM.
            assert trainable <= client.bytes_received < trainable * 1.05
            assert trainable <= client.bytes_sent < trainable * 1.05
            assert client.bytes_sent < total / 2
        # The weights go out twice to a client that evaluates: to train, then to evaluate.
        evaluated = [c for c in report.clients if c.eval_samples > 0]
        assert report.bytes_sent == sum(c.bytes_received for c in report.clients) + sum(
            c.bytes_received for c in evaluated
        )
        assert report.bytes_received == sum(c.bytes_sent for c in report.clients)
    assert reporter.rounds[1].clients[0].load_seconds > 0


def test_server_and_federated_evaluation_are_reported_separately(
    fedavg_run: tuple[RecordingReporter, Path, FederationConfig],
) -> None:
    """By default (one episode held out for the server, a tenth of each client's episodes,
    at least one, kept back by the client) both evaluations run every round."""
    reporter, _, config = fedavg_run
    plan = plan_data(config)
    assert all(held is not None and held.episodes for held in plan.client_eval)
    server = set(plan.holdout[0].episodes or [])
    for train, held in zip(plan.clients, plan.client_eval, strict=True):
        assert held is not None and train.episodes is not None
        assert not set(train.episodes) & (set(held.episodes or []) | server)
    for report in reporter.rounds[1:]:
        clients = report.clients
        assert all(c.eval_loss is not None and c.eval_samples > 0 for c in clients)
        assert all(c.eval_action_mse is not None and c.eval_action_mse > 0 for c in clients)
        # Each client trained on its training episodes only (its held-out ones were never fed).
        assert [c.episodes for c in clients] == [len(t.episodes or []) for t in plan.clients]
        samples = sum(c.eval_samples for c in clients)
        assert report.fed_eval_samples == samples
        assert report.fed_eval_loss == pytest.approx(
            sum((c.eval_loss or 0) * c.eval_samples for c in clients) / samples
        )
        assert report.fed_eval_action_mse == pytest.approx(
            sum((c.eval_action_mse or 0) * c.eval_samples for c in clients) / samples
        )
        assert report.eval_loss is not None and report.eval_action_mse is not None
        assert report.eval_loss != report.fed_eval_loss  # other data, measured apart
    assert any("federated evaluation: client-0" in line for line in reporter.logs)
    # The kept checkpoint's "eval loss" (best by) is the server's.
    assert reporter.saved[-1].eval_loss == reporter.rounds[-1].eval_loss


def test_checkpoints_load_in_plain_lerobot_and_act(
    fedavg_run: tuple[RecordingReporter, Path, FederationConfig],
    images_dataset: DatasetRef,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla import SmolVLAPolicy

    reporter, out, _ = fedavg_run
    assert [s.round for s in reporter.saved] == [1, 2]
    assert reporter.removed == [1] or reporter.removed == []  # keep 1 + the best by eval loss
    last = reporter.saved[-1]
    folder = Path(last.path)
    assert folder == out / "checkpoints" / "round_0002" / "pretrained_model"
    assert sha256_of(folder / "model.safetensors") == last.sha256
    assert json.loads((folder.parent / ROUND_FILE).read_text())["round"] == 2
    assert not list((out / "checkpoints").glob(".round_*"))  # no half-written folders left

    monkeypatch.chdir(folder)  # the tiny policy's VLM is the folder's own ./vlm
    policy = SmolVLAPolicy.from_pretrained(folder)
    preprocessor, postprocessor = make_pre_post_processors(
        policy.config, pretrained_path=str(folder)
    )
    data = task.open_dataset(images_dataset, chunk_size=4, owner="t")
    frame = data.dataset[0]
    observation = {k: v for k, v in frame.items() if k.startswith("observation.")}
    observation["task"] = frame["task"]
    action = postprocessor(policy.select_action(preprocessor(observation)))
    assert action.shape == (1, 6)
    assert torch.isfinite(action).all()


def test_same_seed_gives_identical_first_round(
    fedavg_run: tuple[RecordingReporter, Path, FederationConfig], data_dir: Path, tmp_path: Path
) -> None:
    reporter, _, config = fedavg_run
    # The whole experiment again: the learning-rate schedule spans all its rounds, so a shorter
    # run would train its first round at other rates.
    again = _run(config, tmp_path, data_dir)
    first, repeat = reporter.rounds[1], again.rounds[1]
    assert [c.train_loss for c in repeat.clients] == [c.train_loss for c in first.clients]
    assert repeat.eval_loss == first.eval_loss
    assert again.rounds[0].eval_loss == reporter.rounds[0].eval_loss


def test_messages_pushed_a_few_at_a_time_train_every_client_to_the_same_round(
    fedavg_run: tuple[RecordingReporter, Path, FederationConfig],
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One message per Ray actor pushed ahead of the replies summed (2 for 3 clients, where the
    default pushes all 3 at once): every client still trains each round, summed in the same
    order, so the round's losses and average are the same."""
    reporter, _, config = fedavg_run
    monkeypatch.setattr(runner, "MESSAGES_PER_CLIENT_PROCESS", 1)
    windowed = _run(config, tmp_path, data_dir)
    assert [r.clients_succeeded for r in windowed.rounds[1:]] == [3, 3]

    def losses(run: RecordingReporter) -> list[list[tuple[str, float | None]]]:
        return [[(c.client, c.train_loss) for c in r.clients] for r in run.rounds[1:]]

    assert losses(windowed) == losses(reporter)
    assert [r.eval_loss for r in windowed.rounds] == [r.eval_loss for r in reporter.rounds]


def test_same_seed_gives_identical_later_rounds_whichever_process_serves_each_client(
    images_dataset: DatasetRef, data_dir: Path, tmp_path: Path
) -> None:
    """3 clients on 2 Ray actors: which actor serves which client each round varies from run to
    run; the clients' batches, AdamW states and so the losses must not."""
    config = _config(images_dataset, num_rounds=3, lr_schedule="constant", optimizer_state="kept")
    first = _run(config, tmp_path / "first", data_dir)
    again = _run(config, tmp_path / "again", data_dir)

    def losses(run: RecordingReporter) -> list[dict[str, float | None]]:
        return [{c.client: c.train_loss for c in r.clients} for r in run.rounds[1:]]

    assert losses(again) == losses(first)
    assert [r.eval_loss for r in again.rounds] == [r.eval_loss for r in first.rounds]


def test_kept_optimizer_state_continues_each_clients_adamw_into_the_next_round(
    fedavg_run: tuple[RecordingReporter, Path, FederationConfig], data_dir: Path, tmp_path: Path
) -> None:
    reporter, _, config = fedavg_run
    assert config.optimizer_state == "fresh"  # the default

    kept = _run(config.model_copy(update={"optimizer_state": "kept"}), tmp_path, data_dir)

    def losses(run: RecordingReporter, round: int) -> list[float | None]:
        return [c.train_loss for c in run.rounds[round].clients]

    # Round 1 starts from no state either way; round 2 continues each client's moments and step
    # count (Adam's bias correction of step 4, not of step 1), so it trains otherwise.
    assert losses(kept, 1) == losses(reporter, 1)
    assert kept.rounds[1].eval_loss == reporter.rounds[1].eval_loss
    assert all(a != b for a, b in zip(losses(kept, 2), losses(reporter, 2), strict=True))


def test_fedadam_resumes_from_a_checkpoint_with_its_moments(
    images_dataset: DatasetRef, data_dir: Path, tmp_path: Path
) -> None:
    config = _config(
        images_dataset,
        strategy="fedadam",
        num_rounds=1,
        transport_dtype="bfloat16",
        normalization="federated",
        min_clients=2,
    )
    first = _run(config, tmp_path / "first", data_dir)
    checkpoint = Path(first.saved[-1].path).parent
    moments = load_server_state(checkpoint)
    assert any(k.startswith("m_t|") for k in moments) and any(k.startswith("v_t|") for k in moments)
    assert (checkpoint / SERVER_STATE_FILE).is_file()
    client = first.rounds[1].clients[0]
    trainable, _ = _trainable_bytes(data_dir, images_dataset)
    assert trainable / 2 <= client.bytes_sent < trainable * 0.6  # bfloat16 on the wire

    resumed = config.model_copy(
        update={
            "num_rounds": 2,
            "resume_from": ResumePoint(checkpoint_dir=str(checkpoint), round=1),
        }
    )
    second = _run(resumed, tmp_path / "second", data_dir)
    assert [r.round for r in second.rounds] == [2]
    assert [s.round for s in second.saved] == [2]
    assert second.rounds[0].clients_succeeded == 3


def test_unreadable_dataset_stops_the_run_before_training(
    make_dataset, data_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    good = [make_dataset(f"site_{i}", episodes=2, seed=10 + i) for i in range(2)]
    broken_root = tmp_path / "broken"
    shutil.copytree(str(make_dataset("site_broken", episodes=2, seed=20).root), broken_root)
    for parquet in (broken_root / "data").rglob("*.parquet"):
        parquet.write_bytes(b"not a parquet file")
    broken = DatasetRef(repo_id="synthetic/so100", root=str(broken_root))
    config = FederationConfig(
        policy="tiny",
        num_rounds=1,
        min_clients=2,
        local_steps=2,
        batch_size=4,
        eval_batches=1,
        client_datasets=[*good, broken],
        eval_datasets=[good[0]],
    )
    reporter = RecordingReporter()
    with pytest.raises(
        DatasetError, match=r"client-2: dataset synthetic/so100 at .*broken is unreadable"
    ):
        run_federation(config, reporter, output_dir=tmp_path / "out", data_dir=data_dir)
    assert reporter.rounds == [] and reporter.logs == []  # stopped before Flower started


def _with_nan_actions(source: DatasetRef, root: Path) -> DatasetRef:
    """A copy whose recorded actions are NaN (a faulty sensor): it reads fine, training fails."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(str(source.root), root)
    for parquet in (root / "data").rglob("*.parquet"):
        table = pq.read_table(parquet)
        column = table.column("action")
        nan = pa.array([[float("nan")] * 6] * len(table), type=column.type)
        table = table.set_column(table.schema.get_field_index("action"), "action", nan)
        pq.write_table(table, parquet)
    return source.model_copy(update={"root": str(root)})


def test_client_failing_mid_round_is_recorded_and_the_round_goes_on(
    make_dataset, data_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    good = [make_dataset(f"site_{i}", episodes=2, seed=10 + i) for i in range(2)]
    faulty = _with_nan_actions(make_dataset("site_nan", episodes=2, seed=30), tmp_path / "nan")
    config = FederationConfig(
        policy="tiny",
        num_rounds=2,
        min_clients=2,
        local_steps=2,
        batch_size=4,
        eval_batches=1,
        checkpoint_every=0,
        client_datasets=[*good, faulty],
        eval_datasets=[good[0]],
    )
    reporter = _run(config, tmp_path / "out", data_dir)
    assert [r.round for r in reporter.rounds] == [0, 1, 2]
    for report in reporter.rounds[1:]:
        assert report.clients_sampled == 3
        assert report.clients_succeeded == 2 and report.clients_failed == 1
        failed = [c for c in report.clients if not c.ok]
        assert failed[0].client == "client-2" and "diverged" in (failed[0].error or "")
        assert report.eval_loss is not None and report.eval_loss == report.eval_loss  # not NaN
    assert [s.round for s in reporter.saved] == [2]


def test_mismatched_client_stops_the_run_before_training(
    make_dataset, images_dataset: DatasetRef, data_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    odd = make_dataset("state5", episodes=2, state_dim=5)
    config = FederationConfig(
        policy="tiny",
        min_clients=2,
        client_datasets=[images_dataset, odd],
        eval_datasets=[images_dataset],
    )
    reporter = RecordingReporter()
    with pytest.raises(
        DatasetError,
        match=r"client-1: dataset .*state5 does not match the experiment: state dim 5, expected 6",
    ):
        run_federation(config, reporter, output_dir=tmp_path, data_dir=data_dir)
    assert reporter.rounds == []


def test_missing_dataset_stops_the_run(
    images_dataset: DatasetRef, data_dir: Path, tmp_path: Path
) -> None:
    missing = DatasetRef(repo_id="site/gone", root=str(tmp_path / "gone"))
    config = FederationConfig(
        policy="tiny", min_clients=2, client_datasets=[images_dataset, missing]
    )
    with pytest.raises(DatasetError, match=r"client-1: dataset site/gone at .*gone is missing"):
        run_federation(config, RecordingReporter(), output_dir=tmp_path / "out", data_dir=data_dir)


def test_run_stops_when_too_few_clients_answer(
    make_dataset, data_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from fedvla.engine.federation.server_app import FederationError

    good = [make_dataset(f"site_{i}", episodes=2, seed=10 + i) for i in range(2)]
    faulty = _with_nan_actions(make_dataset("site_nan", episodes=2, seed=30), tmp_path / "nan")
    config = FederationConfig(
        policy="tiny",
        num_rounds=2,
        min_clients=3,
        local_steps=1,
        batch_size=4,
        eval_batches=1,
        client_datasets=[*good, faulty],
        eval_datasets=[good[0]],
    )
    reporter = RecordingReporter()
    with pytest.raises(
        FederationError,
        match=r"round 1: only 2 of the 3 clients needed answered \(client-2: .*diverged",
    ):
        run_federation(config, reporter, output_dir=tmp_path / "out", data_dir=data_dir)
    assert [r.round for r in reporter.rounds] == [0, 1]  # round 1 was still reported
    assert reporter.rounds[1].clients_failed == 1
    assert reporter.saved == []

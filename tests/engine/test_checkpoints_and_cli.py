"""Checkpoint retention and the standalone CLI's errors (no Ray needed)."""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvla.core.experiment_config import DatasetRef
from fedvla.engine.data.loader import frames_to_float
from fedvla.engine.federation import checkpoints
from fedvla.engine.federation.reporter import CheckpointReport, JsonLinesReporter, RoundReport
from fedvla.engine.policy.loading import build_policy, resolve_policy_source, trainable_state
from tests.engine.helpers import tiny_bundle

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Removals:
    removed: list[int] = field(default_factory=list)

    def log(self, message: str) -> None: ...

    def round_finished(self, report: RoundReport) -> None: ...

    def checkpoint_saved(self, report: CheckpointReport) -> None: ...

    def checkpoint_removed(self, round: int) -> None:
        self.removed.append(round)


def test_retention_keeps_the_last_n_and_the_best(
    data_dir: Path, images_dataset: DatasetRef, tmp_path: Path
) -> None:
    bundle, _data = tiny_bundle(data_dir, images_dataset, "t")
    reporter = Removals()
    for server_round, loss in [(1, 0.9), (2, 0.5), (3, 0.8), (4, 0.7), (5, None)]:
        saved = checkpoints.save_checkpoint(
            tmp_path,
            server_round,
            policy=bundle.policy,
            preprocessor=bundle.preprocessor,
            postprocessor=bundle.postprocessor,
            server_state={"m_t|w": np.ones(3, np.float32)},
            eval_loss=loss,
        )
        assert saved.sha256 == checkpoints.sha256_of(Path(saved.path) / "model.safetensors")
        checkpoints.apply_retention(tmp_path, 2, reporter)
    assert [s.round for s in checkpoints.saved_rounds(tmp_path)] == [2, 4, 5]
    assert reporter.removed == [1, 3]
    state = checkpoints.load_server_state(checkpoints.round_dir(tmp_path, 5))
    assert state["m_t|w"].tolist() == [1.0, 1.0, 1.0]


def test_a_checkpoint_copied_away_loads_in_plain_lerobot_without_the_data_dir(
    images_dataset: DatasetRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla import SmolVLAPolicy

    server_data, output = tmp_path / "server" / "data", tmp_path / "server" / "run"
    bundle, data = tiny_bundle(server_data, images_dataset, "t")
    saved = checkpoints.save_checkpoint(
        output,
        1,
        policy=bundle.policy,
        preprocessor=bundle.preprocessor,
        postprocessor=bundle.postprocessor,
        server_state={},
        eval_loss=None,
    )
    copy = tmp_path / "elsewhere" / "pretrained_model"
    shutil.copytree(saved.path, copy)
    shutil.rmtree(tmp_path / "server")  # the data dir (and its tiny VLM) and the run are gone
    for path in copy.rglob("*.json"):
        assert str(tmp_path) not in path.read_text(), f"{path.name} names a server path"
    assert json.loads((copy / "config.json").read_text())["vlm_model_name"] == "./vlm"
    assert (copy / "vlm" / "tokenizer.json").is_file()

    frame = data.dataset[0]
    observation = {k: v for k, v in frame.items() if k.startswith("observation.")}
    observation = frames_to_float(observation | {"task": frame["task"]}, data.camera_keys)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        bundle.policy.eval()
        expected = bundle.postprocessor(
            bundle.policy.select_action(bundle.preprocessor(dict(observation)))
        )

    monkeypatch.chdir(copy)  # lerobot resolves the carried ./vlm from the working directory
    policy = SmolVLAPolicy.from_pretrained(copy)
    # lerobot's scripts load the processors so (PolicyProcessorPipeline.from_pretrained).
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=str(copy))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        action = postprocessor(policy.select_action(preprocessor(dict(observation))))
    assert action.shape == (1, 6)
    torch.testing.assert_close(action, expected)

    # fedvla resumes from (or fine-tunes) the copy, from anywhere, with no data dir either.
    monkeypatch.chdir(tmp_path)
    inputs = {k: f for k, f in policy.config.input_features.items()}
    outputs = {k: f for k, f in policy.config.output_features.items()}
    loaded = build_policy(
        resolve_policy_source(str(copy)),
        data_dir=tmp_path / "no-data-dir",
        input_features=inputs,
        output_features=outputs,
        seed=0,
    )
    for name, value in trainable_state(loaded.policy).items():
        torch.testing.assert_close(value, trainable_state(bundle.policy)[name])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedvla.engine.federation", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_cli_refuses_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"policy": "tiny", "num_rounds": 0, "client_datasets": []}))
    result = _cli("--config", str(config), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "num_rounds" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_names_the_mismatched_client(
    images_dataset: DatasetRef, make_dataset, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    odd = make_dataset("fps15", episodes=2, fps=15)
    config = tmp_path / "cfg.json"
    config.write_text(
        json.dumps(
            {
                "policy": "tiny",
                "min_clients": 2,
                "client_datasets": [images_dataset.model_dump(), odd.model_dump()],
            }
        )
    )
    result = _cli("--config", str(config), "--output", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "client-1: dataset synthetic/so100" in result.stderr
    assert "fps 15, expected 30" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "events.jsonl").exists()  # stopped before any round


def test_json_lines_reporter_writes_one_object_per_event(tmp_path: Path) -> None:
    reporter = JsonLinesReporter(tmp_path / "events.jsonl")
    reporter.log("hello")
    reporter.checkpoint_removed(3)
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert lines == [
        {"kind": "log", "message": "hello"},
        {"kind": "checkpoint_removed", "round": 3},
    ]


@pytest.mark.parametrize("source", ["./relative/missing", "too/many/slashes"])
def test_unknown_policy_source_is_named(source: str) -> None:
    from fedvla.engine.policy.loading import PolicySourceError

    with pytest.raises(PolicySourceError, match="no such folder and not a hub id"):
        resolve_policy_source(source)

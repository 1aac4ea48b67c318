"""learning_parity and transport_precision: real federations at smoke size."""

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_learning_parity_quick_compares_federated_with_centralized(run_bench, tmp_path: Path):  # type: ignore[no-untyped-def]
    result, table = run_bench("learning_parity", "--quick")

    runs = result["runs"]
    assert set(runs) == {"centralized", "fedavg-iid", "fedprox-task"}
    rounds = result["sizes"]["rounds"]
    for run in runs.values():
        assert len(run["eval_loss"]) == rounds + 1  # round 0 is the starting policy
        assert all(math.isfinite(v) for v in run["eval_loss"])
    # Every run starts from the same seeded policy, evaluated on the same held-out data.
    starts = {round(run["eval_loss"][0], 5) for run in runs.values()}
    assert len(starts) == 1
    assert runs["centralized"]["total_steps"] == 3 * result["sizes"]["local_steps"] * rounds
    assert result["target"]["measured"] == pytest.approx(
        runs["fedavg-iid"]["eval_loss"][-1] / runs["centralized"]["eval_loss"][-1]
    )
    assert isinstance(result["target"]["met"], bool)
    assert (tmp_path / "results" / "learning_parity.png").stat().st_size > 1000
    assert "fedprox-task" in table

    # The SO-101-format case: recordings in degrees, 2 clients, one episode held out.
    so101 = json.loads((tmp_path / "results" / "learning_parity_so101.json").read_text())
    assert (tmp_path / "results" / "learning_parity_so101.png").stat().st_size > 1000
    table = (tmp_path / "results" / "learning_parity_so101.md").read_text()
    assert set(so101["runs"]) == {"centralized", "fedavg"}
    assert so101["dataset"]["episodes"] == 3 and so101["sizes"]["holdout_episodes"] == 1
    assert so101["frames"] >= 3 * 9 * 6  # 9 motions of 0.3 s +-30% at 30 fps per episode
    for run in so101["runs"].values():
        assert len(run["eval_loss"]) == so101["sizes"]["rounds"] + 1
        assert all(math.isfinite(v) for v in run["eval_loss"])
    assert len({round(run["eval_loss"][0], 5) for run in so101["runs"].values()}) == 1
    per_round = 2 * so101["sizes"]["local_steps"]
    assert so101["runs"]["centralized"]["total_steps"] == per_round * so101["sizes"]["rounds"]
    assert so101["target"]["default_measured"] == pytest.approx(
        so101["runs"]["fedavg"]["eval_loss"][-1] / so101["runs"]["centralized"]["eval_loss"][-1]
    )
    assert "SO-101-format" in table


def test_transport_precision_quick_sends_about_half_the_bytes_in_bfloat16(run_bench):  # type: ignore[no-untyped-def]
    result, table = run_bench("transport_precision", "--quick")

    runs = result["runs"]
    assert set(runs) == {"float32", "bfloat16"}
    assert 1.9 < runs["bfloat16"]["bytes_ratio"] <= 2.0  # half, plus per-array headers
    assert math.isfinite(runs["bfloat16"]["final_eval_loss"])
    assert runs["float32"]["relative_to_float32"] == 0.0
    assert isinstance(result["target"]["by_dtype"]["bfloat16"]["met"], bool)
    assert "bfloat16" in table

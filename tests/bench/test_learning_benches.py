"""learning_parity and transport_precision: real federations at smoke size."""

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


def test_transport_precision_quick_sends_about_half_the_bytes_in_bfloat16(run_bench):  # type: ignore[no-untyped-def]
    result, table = run_bench("transport_precision", "--quick")

    runs = result["runs"]
    assert set(runs) == {"float32", "bfloat16"}
    assert 1.9 < runs["bfloat16"]["bytes_ratio"] <= 2.0  # half, plus per-array headers
    assert math.isfinite(runs["bfloat16"]["final_eval_loss"])
    assert runs["float32"]["relative_to_float32"] == 0.0
    assert isinstance(result["target"]["by_dtype"]["bfloat16"]["met"], bool)
    assert "bfloat16" in table

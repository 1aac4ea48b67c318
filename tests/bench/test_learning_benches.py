"""learning_parity and transport_precision: real federations at smoke size."""

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_learning_parity_quick_compares_federated_with_centralized(run_bench, tmp_path: Path):  # type: ignore[no-untyped-def]
    result, table = run_bench("learning_parity", "--quick", "--seeds", "0,1")

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

    # The SO-101-format case: recordings in degrees, 2 clients, one episode held out; every run
    # at each seed, against centralized at the same seed.
    so101 = json.loads((tmp_path / "results" / "learning_parity_so101.json").read_text())
    assert (tmp_path / "results" / "learning_parity_so101.png").stat().st_size > 1000
    table = (tmp_path / "results" / "learning_parity_so101.md").read_text()
    assert set(so101["runs"]) == {"centralized", "fedavg"}
    assert so101["seeds"] == [0, 1]
    assert so101["dataset"]["episodes"] == 3 and so101["sizes"]["holdout_episodes"] == 1
    assert so101["frames"] >= 3 * 9 * 6  # 9 motions of 0.3 s +-30% at 30 fps per episode
    central = so101["runs"]["centralized"]["by_seed"]
    fedavg = so101["runs"]["fedavg"]
    for run in so101["runs"].values():
        assert set(run["by_seed"]) == {"0", "1"}
        for seeded in run["by_seed"].values():
            assert len(seeded["eval_loss"]) == so101["sizes"]["rounds"] + 1
            assert all(math.isfinite(v) for v in seeded["eval_loss"])
    for seed in ("0", "1"):
        # At one seed every run starts from the same policy, evaluated on the same samples ...
        assert central[seed]["eval_loss"][0] == pytest.approx(
            fedavg["by_seed"][seed]["eval_loss"][0], abs=1e-5
        )
        assert fedavg["ratio_to_centralized"]["by_seed"][seed] == pytest.approx(
            fedavg["by_seed"][seed]["eval_loss"][-1] / central[seed]["eval_loss"][-1]
        )
    # ... and another seed is another starting policy, split and batches.
    assert central["0"]["eval_loss"][0] != pytest.approx(central["1"]["eval_loss"][0], abs=1e-5)
    per_round = 2 * so101["sizes"]["local_steps"]
    assert central["0"]["total_steps"] == per_round * so101["sizes"]["rounds"]
    ratios = fedavg["ratio_to_centralized"]["by_seed"].values()
    target = so101["target"]
    assert target["default_mean"] == pytest.approx(sum(ratios) / 2)
    assert target["default_worst"] == pytest.approx(max(ratios))
    assert target["default_met_mean"] == (target["default_mean"] <= target["ratio_max"])
    assert target["default_met_every_seed"] == (target["default_worst"] <= target["ratio_max"])
    assert target["best"] == "fedavg"
    assert "SO-101-format" in table and "seed 1" in table and "worst seed" in table


def test_transport_precision_quick_sends_about_half_the_bytes_in_bfloat16(run_bench):  # type: ignore[no-untyped-def]
    result, table = run_bench("transport_precision", "--quick")

    runs = result["runs"]
    assert set(runs) == {"float32", "bfloat16"}
    assert 1.9 < runs["bfloat16"]["bytes_ratio"] <= 2.0  # half, plus per-array headers
    assert math.isfinite(runs["bfloat16"]["final_eval_loss"])
    assert runs["float32"]["relative_to_float32"] == 0.0
    assert isinstance(result["target"]["by_dtype"]["bfloat16"]["met"], bool)
    assert "bfloat16" in table

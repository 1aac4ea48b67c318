"""gpu_throughput (on the CPU) and client_memory at smoke size."""

import pytest


@pytest.mark.slow
def test_gpu_throughput_quick_compares_the_three_feedings_on_cpu(run_bench) -> None:  # type: ignore[no-untyped-def]
    result, table = run_bench(
        "gpu_throughput", "--quick", "--device", "cpu", result_name="gpu_throughput_cpu"
    )

    assert result["device"] == "cpu" and result["gpu"] is None
    assert set(result["rows"]) == {"2", "4"}
    for row in result["rows"].values():
        for column in ("fedvla", "lerobot", "compute_lerobot_setup", "compute_fedvla_setup"):
            assert row[column]["samples_per_s"] > 0
            assert row[column]["samples"] > 0
    labels = [label for label, _ in result["step_table"]]
    assert labels == ["lerobot setup", "+ loss without host sync"]  # the CUDA-only ones left out
    assert result["dataset"]["cameras"] == ["front", "wrist"]
    assert "fedvla client loop" in table and "CPU" in table


@pytest.mark.slow
def test_client_memory_quick_measures_every_size(run_bench) -> None:  # type: ignore[no-untyped-def]
    result, table = run_bench("client_memory", "--quick")

    assert [e["clients"] for e in result["engine"]] == [2, 4]
    for entry in result["engine"]:
        assert entry["clients_ok"] == [entry["clients"]] * 2
        assert len(entry["round_seconds"]) == 2
        assert entry["peak_pss_gib"] > 0.1  # torch alone is more than that
    assert isinstance(result["target"]["met"], bool)
    assert result["target"]["met"] is False  # 32 clients were not measured
    assert "virtual clients" in table

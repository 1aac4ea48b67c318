"""aggregation, federation_overhead, orchestration and fast_start at smoke size."""

import pytest
import redis

from tests.conftest import _unavailable

BENCH_REDIS = "redis://127.0.0.1:6379/14"


@pytest.mark.slow
def test_aggregation_small_shapes_average_like_numpy(run_bench):  # type: ignore[no-untyped-def]
    result, table = run_bench(
        "aggregation", "--scale", "0.01", "--clients", "2,4", "--repeats", "1"
    )

    assert [r["clients"] for r in result["results"]] == [2, 4]
    assert result["update_params"] > 0
    assert result["engine_vs_numpy_max_abs_difference"] < 1e-6
    for row in result["results"]:
        assert row["input_bytes"] == row["clients"] * result["update_bytes"]
        assert row["bound_seconds"] > 0 and row["engine_seconds"] > 0
        assert row["flower_seconds"] > 0
    assert "Flower stock" in table


@pytest.mark.slow
def test_federation_overhead_quick_reports_rounds_and_loads(run_bench):  # type: ignore[no-untyped-def]
    result, _ = run_bench("federation_overhead", "--quick")

    by_name = {r["case"]["name"]: r for r in result["results"]}
    assert set(by_name) == {"tiny", "medium"}
    assert by_name["medium"]["params_trainable"] > 10 * by_name["tiny"]["params_trainable"]
    for entry in by_name.values():
        rounds = entry["case"]["rounds"]
        assert len(entry["round_seconds"]) == rounds
        assert len(entry["local_train_seconds"]) == rounds + 1  # and once after the federation
        assert entry["clients_ok"] == [1] * rounds
    # Built once per client per run (reported with round 1); later rounds only assign weights.
    tiny = by_name["tiny"]
    assert tiny["load_seconds_first_round_max"] > tiny["load_seconds_later_rounds_max"]
    assert isinstance(result["target"]["met"], bool)


@pytest.mark.redis
def test_orchestration_quick_measures_rest_and_sse(run_bench):  # type: ignore[no-untyped-def]
    try:
        redis.Redis.from_url(BENCH_REDIS).ping()
    except redis.RedisError as error:
        _unavailable("Redis", error)
    result, table = run_bench("orchestration", "--quick")

    rest = result["rest"]
    assert rest["statuses"] == {"200": rest["requests"]}
    assert set(rest["endpoints"]) == {"run status", "rounds", "checkpoints"}
    by_redis = {case["redis"]: case for case in result["sse"]}
    assert set(by_redis) == {False, True}
    for case in by_redis.values():
        assert case["missing"] == 0
        assert case["deliveries"] == case["subscribers"] * case["events"]
        assert case["p99_ms"] >= case["p50_ms"] > 0
    assert "SSE with Redis" in table


@pytest.mark.slow
def test_fast_start_quick_times_both_paths_from_the_api(run_bench):  # type: ignore[no-untyped-def]
    result, table = run_bench("fast_start", "--quick")

    by_mode = {entry["mode"]: entry for entry in result["results"]}
    assert set(by_mode) == {"warm", "cold"}
    for entry in by_mode.values():
        assert entry["all_succeeded"]
        (sample,) = entry["samples"]
        assert 0 < sample["claimed_s"] < sample["round_0_s"] < sample["first_round_s"]
        assert len(sample["load_average"]) == 3
    warm_ready = [m for _, _, m in by_mode["warm"]["samples"][0]["events"] if "ready on" in m]
    assert "forked from warm process" in warm_ready[0]
    assert "launch to round 1" in table


@pytest.mark.slow
def test_deployment_run_quick_compares_rounds_and_reads_the_sites(run_bench):  # type: ignore[no-untyped-def]
    result, table = run_bench("deployment_run", "--quick")

    assert {mode: run["exit_code"] for mode, run in result["runs"].items()} == {
        "deployment": 0,
        "simulation": 0,
    }
    for run in result["runs"].values():
        assert sorted(run["round_seconds"]) == ["1", "2"]  # JSON keys
    assert result["deployment_round_median_s"] > 0 and result["simulation_round_median_s"] > 0
    assert isinstance(result["round_ratio_met"], bool) and isinstance(
        result["site_fixed_met"], bool
    )
    for site in result["sites_detail"].values():
        assert site["all_ok"] and site["tasks"] == 3  # describe, then one train per round
        assert site["policies_built"] == 1 and site["trainer_processes"] == 1
        assert 0 <= site["fixed_in_trainer_s"][0] <= site["fixed_at_site_s"][0]
    assert len(result["load_average_between_runs"]) == 5  # at the start and after each run
    assert "per-round fixed cost at a site" in table
    # The ServerApp's own account of the exchanges: the query, then a train per round.
    kinds = [e["message_type"] for e in result["runs"]["deployment"]["exchanges"]]
    assert kinds == ["query", "train", "train"] and result["runs"]["simulation"]["exchanges"] == []
    assert result["serverapp_push_median_s"] > 0 and result["serverapp_pull_requests_median"] >= 1
    [longer] = result["longer_work"]  # the same comparison with more local work per round
    assert longer["local_steps"] == 2 and longer["deployment_round_median_s"] > 0
    assert "the same with 2 local steps" in table

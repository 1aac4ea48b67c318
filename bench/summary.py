"""The README's Performance table, built from bench/results/*.json (nothing typed by hand).

Reads every benchmark's result (ours and comm_bytes, dispatch_latency, gpu_check) and writes
bench/results/summary.md; with --readme, also replaces the README's table between its
`<!-- performance:begin -->` and `<!-- performance:end -->` markers.

    .venv/bin/python bench/summary.py [--readme]
"""

import argparse
import json
import subprocess
from collections.abc import Callable
from typing import Any

from common import RESULTS_DIR, ROOT, markdown_table

BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"
THIS_VM = "VM, 2 CPUs, shared"
Row = list[Any]


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _committed(name: str) -> str:
    """When a result without its own timestamp was last committed (its date)."""
    found = subprocess.run(
        ["git", "log", "-1", "--format=%cs", "--", f"bench/results/{name}.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return found or "uncommitted"


def _day(result: dict[str, Any], key: str = "finished_at") -> str:
    return str(result.get(key, ""))[:10]


def _load_note(result: dict[str, Any]) -> str:
    start, end = result["load_average_start"][0], result["load_average_end"][0]
    return f"{THIS_VM}, load {start}→{end}"


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def comm_rows() -> list[Row]:
    result = _load("comm_bytes")
    if result is None:
        return []
    full = result["state_dict_bytes_float32"]
    wire = result["wire_bytes_per_client_per_direction"]
    date = _committed("comm_bytes")
    command = "`HF_HUB_OFFLINE=1 .venv/bin/python bench/comm_bytes.py`"
    rows = []
    for dtype, target in (("float32", 4.5), ("bfloat16", 9.0)):
        ratio = full / wire[dtype]
        rows.append(
            [
                f"1. Bytes per client per round, {dtype} update (smolvla_base shape)",
                f"{wire[dtype] / 2**20:.1f} MiB; {ratio:.2f}x fewer than the fp32 state dict "
                f"({full / 2**20:.0f} MiB)",
                f"≥ {target}x fewer",
                _verdict(ratio >= target),
                date,
                THIS_VM,
                command,
            ]
        )
    return rows


def transport_rows() -> list[Row]:
    result = _load("transport_precision")
    if result is None:
        return []
    rows = []
    for dtype, verdict in result["target"]["by_dtype"].items():
        rows.append(
            [
                f"1. Eval loss with {dtype} transport vs float32 (learning benchmark, FedAvg IID)",
                f"{verdict['relative_eval_loss']:+.2%}",
                "within 2%",
                _verdict(verdict["met"]),
                _day(result),
                _load_note(result),
                f"`{result['command']}`",
            ]
        )
    return rows


def aggregation_rows() -> list[Row]:
    result = _load("aggregation")
    if result is None:
        return []
    rows = []
    for entry in result["results"]:
        rows.append(
            [
                f"2. FedAvg of {entry['clients']} smolvla_base updates "
                f"({entry['input_bytes'] / 2**30:.1f} GiB)",
                f"engine {entry['engine_seconds']} s, Flower stock {entry['flower_seconds']} s, "
                f"bound {entry['bound_seconds']} s: {entry['engine_fraction_of_bound']:.2f} of "
                f"the bound's speed",
                "≥ 0.5 of bound; ≤ Flower's time",
                f"{_verdict(entry['meets_half_bound'])}; "
                f"{_verdict(entry['no_slower_than_flower'])}",
                _day(result),
                _load_note(result),
                f"`{result['command']}`",
            ]
        )
    if result["skipped_clients_for_memory"]:
        rows.append(
            [
                f"2. N = {result['skipped_clients_for_memory']}",
                "not run: would not fit in free memory",
                "",
                "not measured",
                _day(result),
                _load_note(result),
                f"`{result['command']}`",
            ]
        )
    return rows


def overhead_rows() -> list[Row]:
    result = _load("federation_overhead")
    if result is None:
        return []
    rows = []
    for entry in result["results"]:
        name = entry["case"]["name"]
        medium = name == "medium"
        rows.append(
            [
                f"3. Round vs local training, {name} policy "
                f"({entry['params_trainable'] / 1e6:.1f}M trainable), "
                f"{entry['case']['local_steps']} steps, {entry['clients']} client(s)",
                f"{entry['steady_round_seconds']} s vs {entry['steady_local_seconds']} s: "
                f"{entry['overhead_vs_local']:+.1%} (vs the client's own training time in the "
                f"same rounds: {entry['overhead_vs_client_training']:+.1%}); load "
                f"{entry['load_seconds_first_round_max']} s in round 1, "
                f"≤ {entry['load_seconds_later_rounds_max']} s later",
                "≤ 10% (medium)" if medium else "(reported)",
                _verdict(result["target"]["met"]) if medium else "-",
                _day(result),
                _load_note(result),
                f"`{result['command']}`",
            ]
        )
    return rows


def dispatch_rows() -> list[Row]:
    rows = []
    targets = {"sqla+sqlite": 2.0, "redis": 1.0}
    for name in ("dispatch_latency", "dispatch_latency_h100"):
        result = _load(name)
        if result is None:
            continue
        machine = THIS_VM if name == "dispatch_latency" else "H100 device machine, 16 CPUs"
        for entry in result["results"]:
            target = targets.get(entry["broker"], 2.0)
            started, ready = entry["started_s"], entry["ready_s"]
            rows.append(
                [
                    f"4. Launch → federation process started ({entry['broker']} broker, "
                    f"{entry['database']}), {entry['runs']} runs",
                    f"started median {started['median']} s (max {started['max']}); child ready "
                    f"median {ready['median']} s (max {ready['max']})",
                    f"{target:g} s",
                    f"started: {_verdict(started['max'] <= target)}; "
                    f"ready: {_verdict(ready['median'] <= target)} (median)",
                    str(result["measured_at"])[:10],
                    machine,
                    "`.venv/bin/python bench/dispatch_latency.py`",
                ]
            )
    return rows


def fast_start_rows() -> list[Row]:
    result = _load("fast_start")
    if result is None:
        return []
    by_mode = {entry["mode"]: entry for entry in result["results"]}
    warm, cold = by_mode.get("warm"), by_mode.get("cold")
    if warm is None:
        return []
    loads = [s["load_average"][0] for entry in result["results"] for s in entry["samples"]]
    measured = (
        f"warm {warm['first_round_median_s']} s "
        f"({warm['first_round_min_s']}-{warm['first_round_max_s']})"
    )
    if cold is not None:
        measured += (
            f"; cold process + Ray ({cold['runs']} runs) {cold['first_round_median_s']} s "
            f"({cold['first_round_min_s']}-{cold['first_round_max_s']})"
        )
    median = warm["first_round_median_s"]
    return [
        [
            f"4. Launch → round 1 finished, tiny policy, 2 clients, embedded default, median of "
            f"{warm['runs']}",
            measured,
            f"< {result['target_s']:g} s",
            _verdict(median is not None and median < result["target_s"]),
            _day(result),
            f"{THIS_VM}, load {min(loads)}-{max(loads)} at the launches",
            "`.venv/bin/python bench/fast_start.py`",
        ]
    ]


def deployment_rows() -> list[Row]:
    result = _load("deployment_run")
    if result is None or "round_ratio" not in result:
        return []
    command = f"`{result['command']}`"
    built = ", ".join(f"{n}: {s['policies_built']}" for n, s in result["sites_detail"].items())
    return [
        [
            f"4. Deployment round vs simulation round, tiny policy, 2 sites, "
            f"{result['local_steps']} steps, median of rounds 2-{result['rounds']}",
            f"deployment {result['deployment_round_median_s']} s, simulation "
            f"{result['simulation_round_median_s']} s: {result['round_ratio']}x",
            f"≤ {result['round_ratio_target']:g}x",
            _verdict(result["round_ratio_met"]),
            _day(result),
            _load_note(result),
            command,
        ],
        *[
            [
                f"4. The same with {row['local_steps']} local steps",
                f"deployment {row['deployment_round_median_s']} s, simulation "
                f"{row['simulation_round_median_s']} s: {row['round_ratio']}x",
                f"≤ {result['round_ratio_target']:g}x",
                _verdict(row["round_ratio_met"]),
                _day(result),
                _load_note(result),
                command,
            ]
            for row in result.get("longer_work", [])
        ],
        [
            "4. Per-round fixed cost at a site (warm site trainer), tiny policy",
            f"{result['site_fixed_median_s']} s outside training per train task "
            f"({result['site_fixed_in_trainer_median_s']} s of it in the trainer"
            + (
                f", {result['supernode_pull_median_s']} s the SuperNode pulling the train "
                "message from the SuperLink"
                if result.get("supernode_pull_median_s") is not None
                else ""
            )
            + f"); policies built: {built}",
            f"< {result['site_fixed_target_s']:g} s",
            _verdict(result["site_fixed_met"]),
            _day(result),
            _load_note(result),
            command,
        ],
    ]


def orchestration_rows() -> list[Row]:
    result = _load("orchestration")
    if result is None:
        return []
    rest = result["rest"]
    endpoints = ", ".join(
        f"{name} {e['p50_ms']}/{e['p99_ms']}" for name, e in rest["endpoints"].items()
    )
    rows = [
        [
            f"4. REST p50/p99 ms at {rest['clients']} concurrent clients",
            f"{endpoints}; all p99 {rest['all_p99_ms']} ms ({rest['requests_per_second']} req/s)",
            "p99 < 50 ms",
            _verdict(result["target"]["rest_met"]),
            _day(result),
            _load_note(result),
            f"`{result['command']}`",
        ]
    ]
    for case in result["sse"]:
        redis = "with Redis" if case["redis"] else "without Redis"
        met = result["target"]["sse_met"][
            f"{'redis' if case['redis'] else 'table'}-{case['subscribers']}"
        ]
        rows.append(
            [
                f"4. SSE delivery, {case['subscribers']} subscribers, {redis}",
                f"{case['following_when_writing']} of {case['subscribers']} following; "
                f"p50 {case['p50_ms']} ms, p99 {case['p99_ms']} ms; {case['missing']} of "
                f"{case['subscribers'] * case['events']} deliveries missing; "
                f"errors {case['errors'] or 'none'}",
                "p99 < 500 ms",
                _verdict(met),
                _day(result),
                _load_note(result),
                f"`{result['command']}`",
            ]
        )
    return rows


def learning_rows() -> list[Row]:
    result = _load("learning_parity")
    if result is None:
        return []
    ratios = ", ".join(
        f"{label} {run['ratio_to_centralized']:.3f}"
        for label, run in result["runs"].items()
        if label != "centralized"
    )
    rows = [
        [
            "5. Final eval loss / centralized (3 clients, tiny policy, synthetic data)",
            ratios,
            "FedAvg IID ≤ 1.10",
            _verdict(result["target"]["met"]),
            _day(result),
            _load_note(result),
            f"`{result['command']}`",
        ]
    ]
    so101 = _load("learning_parity_so101")
    if so101 is not None:
        target = so101["target"]
        seeds = so101["seeds"]
        ratios = "; ".join(
            f"{label} {run['ratio_to_centralized']['mean']:.3f} ("
            + "/".join(f"{run['ratio_to_centralized']['by_seed'][str(s)]:.3f}" for s in seeds)
            + ")"
            for label, run in so101["runs"].items()
            if label != "centralized"
        )
        verdicts = "; ".join(
            f"{what} ({target[name]}): mean {_verdict(target[f'{name}_met_mean'])}, "
            f"every seed {_verdict(target[f'{name}_met_every_seed'])}"
            for name, what in [("default", "defaults"), ("best", "best")]
        )
        rows.append(
            [
                "5. Final eval loss / centralized, equal samples (2 clients, tiny policy, "
                "SO-101-format pick and place, 1 of 4 episodes held out): mean over seeds "
                f"{', '.join(map(str, seeds))} (each seed's ratio)",
                ratios,
                f"≤ {target['ratio_max']:.2f} (mean; every seed)",
                verdicts,
                _day(so101),
                _load_note(so101),
                f"`{so101['command']}`",
            ]
        )
    return rows


def gpu_rows() -> list[Row]:
    result = _load("gpu_check")
    if result is None:
        return []
    base = result["smolvla_base_shape"]
    return [
        [
            "GPU: smolvla_base-shape training step (bf16 autocast)",
            f"{base['steady_step_seconds']} s/step at batch {base['batch_size']}, "
            f"{base['peak_gpu_memory_gib']} GiB peak",
            "(reported)",
            "-",
            _committed("gpu_check"),
            result["gpu"],
            "`.venv/bin/python bench/gpu_check.py`",
        ]
    ]


def throughput_rows() -> list[Row]:
    rows: list[Row] = []
    for name in ("gpu_throughput", "gpu_throughput_cpu"):
        result = _load(name)
        if result is None:
            continue
        on_gpu = result["device"] == "cuda"
        where = "GPU" if on_gpu else "CPU"
        machine = (
            f"{result['gpu']}, {result['machine']['cpus']} CPUs, load "
            f"{result['load_average_start'][0]}→{result['load_average_end'][0]}"
            if on_gpu
            else _load_note(result)
        )
        for batch, row in result["rows"].items():
            if "fedvla" not in row:
                continue
            fedvla, lerobot = row["fedvla"]["samples_per_s"], row["lerobot"]["samples_per_s"]
            compute = row["compute_fedvla_setup"]["samples_per_s"]
            vs_lerobot, vs_compute = fedvla / lerobot, fedvla / compute
            rows.append(
                [
                    f"6. {where}: client loop samples/s, batch {batch} "
                    f"({result['shape']} shape, {result['loader_workers']} loader workers)",
                    f"fedvla {fedvla}, lerobot-train's feeding {lerobot}, compute alone "
                    f"{compute} (lerobot's setup {row['compute_lerobot_setup']['samples_per_s']})"
                    f": {vs_lerobot:.2f}x lerobot, {vs_compute:.2f} of compute",
                    "≥ 1.0x lerobot; ≥ 0.9 of compute",
                    f"{_verdict(vs_lerobot >= 1.0)}; {_verdict(vs_compute >= 0.9)}",
                    _day(result),
                    machine,
                    f"`{result['command']}`",
                ]
            )
        if on_gpu and result["step_table"]:
            steps = "; ".join(
                f"{label} {r['samples_per_s']} ({r['peak_gpu_memory_gib']} GiB)"
                for label, r in result["step_table"]
            )
            rows.append(
                [
                    f"6. GPU: compute alone, one change at a time, batch {result['steps_batch']}",
                    f"samples/s (peak): {steps}",
                    "(reported)",
                    "-",
                    _day(result),
                    machine,
                    f"`{result['command']}`",
                ]
            )
    return rows


def client_memory_rows() -> list[Row]:
    result = _load("client_memory")
    if result is None:
        return []
    engine = sorted(result["engine"], key=lambda e: e["clients"])
    sizes = ", ".join(f"{e['clients']}: {e['peak_pss_gib']}" for e in engine)
    rounds = ", ".join(f"{e['clients']}: {e['round_seconds'][-1]}" for e in engine)
    text = f"peak GiB by clients {sizes}; round 2 s {rounds}"
    if result["baseline"]:
        old = ", ".join(f"{e['clients']}: {e['peak_pss_gib']}" for e in result["baseline"])
        text += f"; {result.get('baseline_label', 'before')}: {old}"
    return [
        [
            f"7. Memory vs virtual clients ({result['policy']} policy, 2 rounds)",
            f"{text}: {result['target']['measured']:+.1%} from "
            f"{engine[0]['clients']} to {engine[-1]['clients']}",
            f"< +{result['target']['growth_max']:.0%} from 2 to 32",
            _verdict(result["target"]["met"]),
            _day(result),
            _load_note(result),
            f"`{result['command']}`",
        ]
    ]


SECTIONS: list[Callable[[], list[Row]]] = [
    comm_rows,
    transport_rows,
    aggregation_rows,
    overhead_rows,
    dispatch_rows,
    fast_start_rows,
    deployment_rows,
    orchestration_rows,
    learning_rows,
    gpu_rows,
    throughput_rows,
    client_memory_rows,
]


def summary_table() -> str:
    rows = [row for section in SECTIONS for row in section()]
    return markdown_table(
        ["question", "measured", "target", "result", "date", "machine", "reproduce"], rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="also update README.md")
    args = parser.parse_args(argv)
    table = summary_table()
    (RESULTS_DIR / "summary.md").write_text(table)
    if args.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        if BEGIN not in text or END not in text:
            parser.error(f"README.md has no {BEGIN} ... {END} block")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

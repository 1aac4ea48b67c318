"""Federation overhead: how much longer is a federated round than training the same steps alone?

For the tiny policy and a medium SmolVLA (the tiny VLM widened: text hidden 512, 8 layers, an
expert as wide; tens of millions of trainable parameters; saved as a local pretrained_model
folder, so the engine loads it like a real checkpoint), it measures on CPU:
  local     - fedvla/engine/federation/task.py's train() of local_steps steps on one client's data,
              same policy, batch, seed and torch threads, in this process, no Flower;
  federated - the engine's real run_federation (Flower simulation on Ray) with 1 client (or
              --clients 2), local_steps per round, no evaluation (eval_every=0): each round's
              wall time as the engine reports it (RoundReport.duration_s, from configure_train
              to the aggregated weights), the client's own training seconds and load seconds.
Local training runs once per round before the federation and once after it (load drifts on a
shared machine). Overhead = fastest round / fastest local run - 1 (load only adds time),
leaving out the first of each (first round: first weights assigned; first local call:
warm-up); the medians' ratio is reported too, and the median of each round's wall time over
the client's own training seconds in that same round (measured together, so load drift cancels
out). Ray's and the
policy's start-up, once per run, are reported apart (whole-run wall time, load seconds).
Target: overhead at most 10% for the medium policy; load once per client per run.
Writes bench/results/federation_overhead.{json,md}.

    .venv/bin/python bench/federation_overhead.py [--clients 1] [--quick]
"""

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import Recorder, bench_parser, markdown_table, median
from learning_parity import Recording

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset

COMMAND = ".venv/bin/python bench/federation_overhead.py"
TARGET_MEDIUM_OVERHEAD = 0.10
MEDIUM_TEXT = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
}
MEDIUM_VISION = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


@dataclass(frozen=True)
class Case:
    name: str
    rounds: int
    local_steps: int
    batch_size: int


FULL = [Case("tiny", 5, 40, 8), Case("medium", 4, 10, 8)]
"""Medium: the engine's default local_steps (10) and batch_size (8)."""
QUICK = [Case("tiny", 2, 2, 2), Case("medium", 2, 1, 2)]


def write_medium_policy(folder: Path, dataset_features: dict[str, Any]) -> Path:
    """A medium SmolVLA as a pretrained_model folder (random weights) for these features."""
    import torch
    from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy

    from fedvla.engine.federation.task import policy_features
    from fedvla.engine.policy.tiny import TINY_IMAGE_SIZE, write_tiny_vlm

    vlm = folder / "vlm"
    write_tiny_vlm(vlm)  # tokenizer and processor; the architecture is widened below
    config_file = vlm / "config.json"
    vlm_config = json.loads(config_file.read_text())
    vlm_config["text_config"].update(MEDIUM_TEXT)
    vlm_config["vision_config"].update(MEDIUM_VISION)
    config_file.write_text(json.dumps(vlm_config, indent=2))
    inputs, outputs = policy_features(dataset_features)
    config = SmolVLAConfig(
        vlm_model_name=str(vlm),
        load_vlm_weights=False,
        num_vlm_layers=MEDIUM_TEXT["num_hidden_layers"],
        expert_width_multiplier=1.0,
        resize_imgs_with_padding=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE),
        chunk_size=8,
        n_action_steps=8,
        num_steps=2,
        max_state_dim=8,
        max_action_dim=8,
        tokenizer_max_length=16,
        scheduler_warmup_steps=0,
        device="cpu",
        push_to_hub=False,
    )
    config.input_features = inputs
    config.output_features = outputs
    torch.manual_seed(0)
    policy = SmolVLAPolicy(config)
    target = folder / "pretrained_model"
    policy.save_pretrained(target)
    return target


def count_params(source: str, features: dict[str, Any], data_dir: Path) -> dict[str, int]:
    from fedvla.engine.federation.task import policy_features
    from fedvla.engine.policy.loading import build_policy, resolve_policy_source

    inputs, outputs = policy_features(features)
    policy = build_policy(
        resolve_policy_source(source),
        data_dir=data_dir,
        input_features=inputs,
        output_features=outputs,
        seed=0,
    ).policy
    return {
        "params_total": sum(p.numel() for p in policy.parameters()),
        "params_trainable": sum(p.numel() for p in policy.parameters() if p.requires_grad),
    }


def local_seconds(config: FederationConfig, data_dir: Path, rounds: range) -> list[float]:
    """task.train of local_steps, once per round, as client-0 trains it: no Flower."""
    import torch

    from fedvla.engine.data.partition import client_label, plan_data
    from fedvla.engine.federation import task
    from fedvla.engine.federation.client_app import _chunk_size
    from fedvla.engine.policy.loading import resolve_policy_source

    torch.set_num_threads(max(1, int(config.client_num_cpus)))
    source = resolve_policy_source(config.policy)
    ref = plan_data(config).clients[0]
    data = task.open_dataset(ref, chunk_size=_chunk_size(source, data_dir), owner="local")
    bundle = task.build_bundle(
        source,
        data.features,
        stats=data.stats,
        data_dir=data_dir,
        seed=config.seed,
        device="cpu",
    )
    seconds = []
    for server_round in rounds:
        result = task.train(
            bundle,
            data,
            steps=config.local_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            seed=task.round_seed(config.seed, server_round, client_label(0)),
        )
        seconds.append(result.seconds)
    return seconds


def federated_rounds(config: FederationConfig, work: Path, data_dir: Path) -> dict[str, Any]:
    from fedvla.engine.federation.runner import run_federation

    reporter = Recording()
    started = time.perf_counter()
    run_federation(
        config, reporter, output_dir=work / f"out-{config.policy[-6:]}", data_dir=data_dir
    )
    wall = time.perf_counter() - started
    rounds = [r for r in reporter.rounds if r.round > 0]
    return {
        "run_wall_seconds": round(wall, 2),
        "round_seconds": [round(r.duration_s, 3) for r in rounds],
        "client_train_seconds": [[round(c.seconds, 3) for c in r.clients] for r in rounds],
        "client_load_seconds": [[round(c.load_seconds, 3) for c in r.clients] for r in rounds],
        "clients_ok": [r.clients_succeeded for r in rounds],
        "bytes_per_round": [r.bytes_sent + r.bytes_received for r in rounds],
    }


def measure(case: Case, clients: int, work: Path) -> dict[str, Any]:
    data_dir = work / "data"
    spec = SyntheticSpec(episodes=4 * clients, frames_per_episode=16)
    root = work / "synthetic"
    if not root.exists():
        generate_dataset(root, spec)
    dataset = DatasetRef(repo_id=spec.repo_id, root=str(root))
    policy = "tiny"
    if case.name == "medium":
        from fedvla.engine.federation.task import open_dataset

        features = open_dataset(dataset, chunk_size=1, owner="bench").features
        policy = str(write_medium_policy(work / "medium", features))
    cpus = float(os.cpu_count() or 1) / clients
    config = FederationConfig(
        policy=policy,
        num_rounds=case.rounds,
        min_clients=clients,
        local_steps=case.local_steps,
        batch_size=case.batch_size,
        learning_rate=1e-4,
        eval_every=0,
        checkpoint_every=0,
        keep_checkpoints=1,
        client_num_cpus=cpus,
        device="cpu",
        partition=Partition(dataset=dataset, num_clients=clients, scheme="iid"),
    )
    from fedvla.engine.federation.task import open_dataset

    features = open_dataset(dataset, chunk_size=1, owner="bench").features
    params = count_params(policy, features, data_dir)
    local = local_seconds(config, data_dir, range(1, case.rounds + 1))
    federated = federated_rounds(config, work, data_dir)
    # Once more after the federation, so that a change in the machine's load shows in both.
    local += local_seconds(config, data_dir, range(1, 2))
    rounds = federated["round_seconds"]
    client_train = [max(r) for r in federated["client_train_seconds"]]
    later = slice(1, None) if len(rounds) > 1 else slice(None)
    # The shared machine only ever adds time: the fastest of each is the estimate; medians too.
    steady_local, steady_round = min(local[1:]), min(rounds[later])
    in_round = [r / c - 1 for r, c in zip(rounds[later], client_train[later], strict=True)]
    loads = federated["client_load_seconds"]
    return {
        "case": asdict(case),
        "clients": clients,
        "client_num_cpus": cpus,
        **params,
        "local_train_seconds": [round(s, 3) for s in local],
        **federated,
        "steady_local_seconds": round(steady_local, 3),
        "steady_round_seconds": round(steady_round, 3),
        "overhead_vs_local": round(steady_round / steady_local - 1, 4),
        "median_local_seconds": round(median(local[1:]), 3),
        "median_round_seconds": round(median(rounds[later]), 3),
        "overhead_vs_local_medians": round(median(rounds[later]) / median(local[1:]) - 1, 4),
        "overhead_vs_client_training": round(median(in_round), 4),
        "first_round_seconds": rounds[0],
        "load_seconds_first_round_max": max(loads[0]),
        "load_seconds_later_rounds_max": max((max(r) for r in loads[1:]), default=0.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--clients", type=int, default=1, choices=(1, 2))
    args = parser.parse_args(argv)
    recorder = Recorder(
        "federation_overhead",
        "Wall time of a federated round (engine's run_federation, Flower simulation) vs the "
        "same local training steps alone, for the tiny and a medium SmolVLA on CPU.",
        COMMAND
        + (f" --clients {args.clients}" if args.clients != 1 else "")
        + (" --quick" if args.quick else ""),
    )
    results = []
    for case in QUICK if args.quick else FULL:
        with tempfile.TemporaryDirectory(prefix=f"bench-overhead-{case.name}-") as scratch:
            entry = measure(case, args.clients, Path(scratch))
        results.append(entry)
        print(json.dumps(entry))
    rows = [
        [
            r["case"]["name"],
            f"{r['params_trainable'] / 1e6:.1f}M / {r['params_total'] / 1e6:.1f}M",
            r["clients"],
            r["case"]["local_steps"],
            r["steady_local_seconds"],
            r["steady_round_seconds"],
            f"{r['overhead_vs_local']:+.1%}",
            f"{r['overhead_vs_local_medians']:+.1%}",
            f"{r['overhead_vs_client_training']:+.1%}",
            r["first_round_seconds"],
            r["load_seconds_first_round_max"],
            r["load_seconds_later_rounds_max"],
            r["run_wall_seconds"],
        ]
        for r in results
    ]
    medium = next(r for r in results if r["case"]["name"] == "medium")
    met = medium["overhead_vs_local"] <= TARGET_MEDIUM_OVERHEAD
    table = markdown_table(
        [
            "policy",
            "trainable / total params",
            "clients",
            "steps per round",
            "local s (fastest)",
            "round s (fastest)",
            "overhead vs local",
            "same, medians",
            "vs client's training in the round",
            "first round s",
            "load s round 1 (max client)",
            "load s later rounds",
            "whole run s",
        ],
        rows,
    )
    table += "\n" + markdown_table(
        ["target", "measured", "result"],
        [
            [
                f"medium overhead ≤ {TARGET_MEDIUM_OVERHEAD:.0%}",
                f"{medium['overhead_vs_local']:+.1%}",
                met,
            ]
        ],
    )
    table += (
        "\nlocal s / round s: fastest, leaving out the first (local: warm-up, measured once per "
        "round before the federation and once after; round 1 assigns the first weights). "
        "Load seconds: policy build (first message in the process) plus weight assignment, as "
        "each client reports them.\n"
    )
    recorder.write(
        {
            "results": results,
            "target": {
                "medium_overhead_max": TARGET_MEDIUM_OVERHEAD,
                "measured": medium["overhead_vs_local"],
                "met": met,
            },
        },
        table,
        out_dir=args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A deployment round against a simulation round of the same work, and a site's fixed cost.

Our SuperLink (TLS, SuperNode authentication) and two site nodes started as their startup kits
start them (fedvla.orchestration.site_node: flower-supernode with the warm site trainer), each with
its own key pair and synthetic dataset, the tiny policy; then a simulation run of the same
experiment on the same two datasets, in the same benchmark. Both runs go through
``python -m fedvla.orchestration.run_child``, as a worker starts them. Compared: the rounds' wall
time as the engine reports it (RoundMetric.duration_s, the same ServerApp code in both modes),
median of the rounds after the first (the first builds each client's feed in both modes). At the
sites: each train task's cost outside training, from the site node's log (``site task`` lines): in
the trainer (hand-over, weights in and out) and in all (with the Runtime API transfers between the
SuperNode and the trainer). On the ServerApp's side: each train exchange through the SuperLink,
from the run's federation.log (exchange_log). The same comparison again with more local work per
round (--longer-local-steps) shows how the fixed cost weighs as training grows. Results:
bench/results/deployment_run.{json,md}.

    .venv/bin/python bench/deployment_run.py [--rounds 5] [--local-steps 4]
        [--longer-local-steps 32] [--quick]
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sqlmodel import Session, col, select  # noqa: E402

from bench.common import Recorder, bench_parser, load_average, markdown_table  # noqa: E402
from fedvla.core.config import Settings  # noqa: E402
from fedvla.core.db import make_engine  # noqa: E402
from fedvla.core.migrate import upgrade_database  # noqa: E402
from fedvla.core.models import RoundMetric, Run, RunEvent, SiteStatus  # noqa: E402
from fedvla.core.schemas.experiments import ExperimentCreate  # noqa: E402
from fedvla.core.schemas.sites import SiteCreate  # noqa: E402
from fedvla.core.services import experiments, run_files, runs, sites  # noqa: E402
from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset  # noqa: E402
from fedvla.engine.policy.tiny import tiny_vlm_dir  # noqa: E402
from fedvla.orchestration.deployment.exchange_log import read_exchanges  # noqa: E402
from fedvla.orchestration.deployment.local_nodes import free_port, start_superlink, start_supernode  # noqa: E402
from fedvla.orchestration.site_node import PULL_LOG_PREFIX, read_task_records  # noqa: E402
from fedvla.orchestration.supervisor import child_env  # noqa: E402
from fedvla.sites.keys import generate_node_keys  # noqa: E402
from fedvla.sites.node_registry import sync_registrations  # noqa: E402
from fedvla.sites.superlink import list_nodes, tls_files  # noqa: E402

FEATURES = {
    "state_dim": 6,
    "action_dim": 6,
    "camera_keys": ["observation.images.front"],
    "camera_resolutions": {"observation.images.front": [24, 32, 3]},
    "fps": 30,
}
ROUND_RATIO_TARGET = 1.2
SITE_FIXED_TARGET_S = 1.0


def main() -> int:
    parser = bench_parser(__doc__ or "")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument(
        "--longer-local-steps",
        type=int,
        nargs="*",
        default=[32],
        help="the same comparison again with more local work per round (its own row)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.local_steps, args.longer_local_steps = 2, 1, [2]
    longer = " ".join(str(steps) for steps in args.longer_local_steps)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python bench/deployment_run.py" + (
        " --quick"
        if args.quick
        else f" --rounds {args.rounds} --local-steps {args.local_steps}"
        f" --longer-local-steps {longer}"
    )
    recorder = Recorder(
        "deployment_run",
        "A deployment round (two local site nodes, warm site trainers) against a simulation "
        "round of the same work, and the per-round fixed cost at a site (tiny policy).",
        command,
    )

    root = Path(tempfile.mkdtemp(prefix="fedvla-deploy-bench-"))
    database = f"sqlite:///{root / 'fedvla.db'}"
    upgrade_database(database)
    settings = Settings(
        environment="test",
        data_dir=root / "server",
        database_url=database,
        redis_url="",
        superlink_port=free_port(),
        fleet_port=free_port(),
    )
    tiny_vlm_dir(settings.data_dir)
    tiny_vlm_dir(root / "site-data")
    superlink = start_superlink(settings)
    nodes: list[subprocess.Popen[bytes]] = []
    engine = make_engine(database)
    common = {
        "policy": "tiny",
        "min_clients": 2,
        "num_rounds": args.rounds,
        "local_steps": args.local_steps,
        "batch_size": 2,
        "eval_every": 0,
        "device": "cpu",
        "seed": 7,
    }
    try:
        with Session(engine) as session:
            site_ids, datasets = [], []
            for i in (1, 2):
                name = f"site-{i}"
                dataset = generate_dataset(
                    root / "datasets" / name,
                    SyntheticSpec(episodes=3, frames_per_episode=8, seed=i),
                )
                datasets.append(dataset)
                keys = generate_node_keys(root / name / "keys")
                body = {
                    "name": name,
                    "dataset": str(dataset),
                    "features": FEATURES,
                    "public_key": keys.public_pem.read_text(),
                }
                site = sites.create_site(
                    session=session, data=SiteCreate.model_validate(body), actor="bench"
                )
                sites.set_status(
                    session=session, site=site, status=SiteStatus.approved, actor="bench", reason=""
                )
                assert site.id is not None
                site_ids.append(site.id)
                nodes.append(
                    start_supernode(
                        settings,
                        site,
                        key=keys.private_key,
                        ca=tls_files(settings).ca_certificate,
                        folder=root / name,
                        data_dir=root / "site-data",
                    )
                )
            sync_registrations(session, settings)
            deadline = time.monotonic() + 600
            while sum(n.online for n in list_nodes(settings)) < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("the site nodes never came online")
                time.sleep(0.5)
            bodies = {
                "deployment": {**common, "mode": "deployment", "site_ids": site_ids},
                "simulation": {
                    **common,
                    "client_datasets": [
                        {"repo_id": f"local/{d.name}", "root": str(d)} for d in datasets
                    ],
                },
            }
            pairs = {
                steps: {
                    mode: _create_run(
                        session, {**body, "name": f"bench-{mode}-{steps}", "local_steps": steps}
                    )
                    for mode, body in bodies.items()
                }
                for steps in (args.local_steps, *args.longer_local_steps)
            }
        loads = [load_average()]
        outcomes: dict[int, dict[str, Any]] = {}
        for steps, pair in pairs.items():
            outcomes[steps] = {}
            for mode, run_id in pair.items():
                outcomes[steps][mode] = _run(settings, engine, run_id)
                loads.append(load_average())
            if steps == args.local_steps:  # the sites' records of the first pair's rounds
                logs = {
                    f"site-{i}": (root / f"site-{i}" / "supernode.log").read_text() for i in (1, 2)
                }
                site_tasks = {name: read_task_records(text) for name, text in logs.items()}
                site_pulls = {
                    name: read_task_records(text, PULL_LOG_PREFIX) for name, text in logs.items()
                }
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, 15)
                node.wait(30)
        superlink.stop()
        engine.dispose()

    outcome = outcomes[args.local_steps]
    results = summarise(outcome, site_tasks, site_pulls, args.rounds, args.local_steps)
    results["longer_work"] = [
        {"local_steps": steps, **round_ratio(outcomes[steps])} for steps in args.longer_local_steps
    ]
    results["load_average_between_runs"] = loads
    recorder.write(results, table(results), out_dir=args.out_dir)
    ok = all(o["exit_code"] == 0 for pair in outcomes.values() for o in pair.values())
    return 0 if ok else 1


def _create_run(session: Session, body: dict[str, Any]) -> int:
    experiment = experiments.create_experiment(
        session=session, data=ExperimentCreate.model_validate(body)
    )
    config = runs.freeze_config(session, experiment)
    assert experiment.id is not None
    run = Run(experiment_id=experiment.id, config=config.model_dump(mode="json"))
    session.add(run)
    session.commit()
    assert run.id is not None
    return run.id


def _run(settings: Settings, engine: Any, run_id: int) -> dict[str, Any]:
    """The run's federation process, as a worker starts it; its rounds' durations."""
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-m", "fedvla.orchestration.run_child", str(run_id)],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.monotonic() - started
    with Session(engine) as session:
        rounds = session.exec(
            select(RoundMetric).where(RoundMetric.run_id == run_id).order_by(col(RoundMetric.round))
        ).all()
        events = session.exec(select(RunEvent.message).where(RunEvent.run_id == run_id)).all()
        log = run_files.federation_log(run_files.run_dir_of(session, settings, run_id))
    if child.returncode != 0:
        print(child.stderr[-3000:], "\n".join(events), file=sys.stderr)
    return {
        "exit_code": child.returncode,
        "process_seconds": round(seconds, 2),
        "round_seconds": {r.round: round(r.duration_s, 3) for r in rounds if r.round > 0},
        # The ServerApp's exchanges through the SuperLink (none in simulation), in order.
        "exchanges": read_exchanges(log.read_text()) if log.is_file() else [],
    }


def round_ratio(pair: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A deployment round against a simulation round: medians of the rounds after the first."""

    def later_rounds(mode: str) -> list[float]:
        seconds = pair[mode]["round_seconds"]
        return [v for r, v in seconds.items() if r > 1] or list(seconds.values())

    deployment = statistics.median(later_rounds("deployment"))
    simulation = statistics.median(later_rounds("simulation"))
    return {
        "deployment_round_median_s": round(deployment, 3),
        "simulation_round_median_s": round(simulation, 3),
        "round_ratio": round(deployment / simulation, 3),
        "round_ratio_met": deployment / simulation <= ROUND_RATIO_TARGET,
    }


def summarise(
    outcome: dict[str, dict[str, Any]],
    site_tasks: dict[str, list[dict[str, Any]]],
    site_pulls: dict[str, list[dict[str, Any]]],
    rounds: int,
    local_steps: int,
) -> dict[str, Any]:
    ratio = round_ratio(outcome)
    deployment_round = ratio["deployment_round_median_s"]
    per_site = {}
    for name, records in site_tasks.items():
        trains = [t for t in records if t["message_type"] == "train"]
        later = trains[1:] or trains
        per_site[name] = {
            "tasks": len(records),
            "all_ok": all(t["ok"] for t in records),
            "policies_built": max((t["policies_built"] for t in records), default=0),
            "trainer_processes": len({t["trainer_pid"] for t in records}),
            "train_seconds": [t["train_seconds"] for t in trains],
            "fixed_in_trainer_s": [round(t["app_seconds"] - t["train_seconds"], 3) for t in later],
            "fixed_at_site_s": [round(t["seconds"] - t["train_seconds"], 3) for t in later],
            "runtime_api_pull_s": [t["pull_seconds"] for t in later],
            "runtime_api_push_s": [t["push_seconds"] for t in later],
            # The SuperNode pulling each message's objects from the SuperLink (in the trainer's
            # pull above): the query, then one per round; rounds 2+ here.
            "supernode_pull_s": [p["seconds"] for p in site_pulls.get(name, [])[2:]],
            "supernode_pull_objects": [p["objects"] for p in site_pulls.get(name, [])[2:]],
        }
    fixed_at_site = statistics.median(v for s in per_site.values() for v in s["fixed_at_site_s"])
    trains = [e for e in outcome["deployment"]["exchanges"] if e["message_type"] == "train"][1:]

    def exchange_median(key: str) -> float | None:
        return round(statistics.median(e[key] for e in trains), 3) if trains else None

    fixed_in_trainer = statistics.median(
        v for s in per_site.values() for v in s["fixed_in_trainer_s"]
    )

    def median_of(key: str) -> float | None:
        values = [v for s in per_site.values() for v in s[key]]
        return round(statistics.median(values), 3) if values else None

    return {
        "sites": 2,
        "rounds": rounds,
        "local_steps": local_steps,
        "policy": "tiny",
        "runs": outcome,
        **ratio,
        "round_ratio_target": ROUND_RATIO_TARGET,
        "site_fixed_median_s": round(fixed_at_site, 3),
        "site_fixed_in_trainer_median_s": round(fixed_in_trainer, 3),
        "site_runtime_pull_median_s": median_of("runtime_api_pull_s"),
        "site_runtime_push_median_s": median_of("runtime_api_push_s"),
        "supernode_pull_median_s": median_of("supernode_pull_s"),
        # The ServerApp's side of a train exchange, rounds 2+: pushing the messages, then
        # waiting until the last reply is in, of which inside pull requests.
        "serverapp_push_median_s": exchange_median("push_seconds"),
        "serverapp_until_last_reply_median_s": exchange_median("until_last_reply_seconds"),
        "serverapp_pull_median_s": exchange_median("pull_seconds"),
        "serverapp_pull_requests_median": exchange_median("pull_requests"),
        "serverapp_rest_of_round_median_s": round(
            deployment_round
            - (exchange_median("push_seconds") or 0)
            - (exchange_median("until_last_reply_seconds") or 0),
            3,
        ),
        "site_fixed_target_s": SITE_FIXED_TARGET_S,
        "site_fixed_met": fixed_at_site < SITE_FIXED_TARGET_S,
        "sites_detail": per_site,
    }


def table(results: dict[str, Any]) -> str:
    rows = [
        [
            f"round, median of rounds 2+ (s), {results['local_steps']} local steps",
            results["deployment_round_median_s"],
            results["simulation_round_median_s"],
            f"{results['round_ratio']}x (target <= {ROUND_RATIO_TARGET}x)",
            results["round_ratio_met"],
        ],
        *[
            [
                f"the same with {row['local_steps']} local steps",
                row["deployment_round_median_s"],
                row["simulation_round_median_s"],
                f"{row['round_ratio']}x",
                row["round_ratio_met"],
            ]
            for row in results["longer_work"]
        ],
        [
            "per-round fixed cost at a site (s)",
            results["site_fixed_median_s"],
            "-",
            f"in the trainer {results['site_fixed_in_trainer_median_s']} s "
            f"(target < {SITE_FIXED_TARGET_S} s)",
            results["site_fixed_met"],
        ],
    ]
    built = {n: s["policies_built"] for n, s in results["sites_detail"].items()}
    return markdown_table(["", "deployment", "simulation", "measure", "target"], rows) + (
        f"\nPolicies built per site over {results['rounds']} rounds: {built}.\n"
        f"\nWhere a site's fixed cost goes (medians, rounds 2+): the trainer waiting for the "
        f"train message from its SuperNode {results['site_runtime_pull_median_s']} s (of which "
        f"the SuperNode pulling its objects from the SuperLink "
        f"{results['supernode_pull_median_s']} s), pushing the reply to the SuperNode "
        f"{results['site_runtime_push_median_s']} s.\n"
        f"\nThe ServerApp's side of a train exchange (medians, rounds 2+): pushing both messages "
        f"to the SuperLink {results['serverapp_push_median_s']} s, then until the last reply is "
        f"in {results['serverapp_until_last_reply_median_s']} s, of which "
        f"{results['serverapp_pull_median_s']} s inside "
        f"{results['serverapp_pull_requests_median']} pull requests; the rest of a round "
        f"(sampling, aggregation, evaluation, the round's report and checkpoint) "
        f"{results['serverapp_rest_of_round_median_s']} s.\n"
    )


if __name__ == "__main__":
    sys.exit(main())

"""A two-site, two-round deployment run on this machine's loopback, timed.

Our SuperLink (TLS, SuperNode authentication), two flower-supernode processes started as their
startup kits say, each with its own key pair and synthetic dataset, the tiny policy. Timed from
the start of the run's federation process (``python -m worker.run_child``, as a worker starts it)
to: the federation started on the SuperLink, each round in the database, the process's end.
Results go to bench/results/deployment_run.json.

    .venv/bin/python bench/deployment_run.py [--rounds 2] [--local-steps 2]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sqlmodel import Session, col, select  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.core.db import make_engine  # noqa: E402
from app.core.migrate import upgrade_database  # noqa: E402
from app.models import RoundMetric, Run, RunEvent, SiteStatus  # noqa: E402
from app.schemas.experiments import ExperimentCreate  # noqa: E402
from app.schemas.sites import SiteCreate  # noqa: E402
from app.services import experiments, runs, sites  # noqa: E402
from worker.data.synthetic import SyntheticSpec, generate_dataset  # noqa: E402
from worker.deployment.keys import generate_node_keys  # noqa: E402
from worker.deployment.local_nodes import free_port, start_superlink, start_supernode  # noqa: E402
from worker.deployment.node_registry import sync_registrations  # noqa: E402
from worker.deployment.superlink import list_nodes, tls_files  # noqa: E402
from worker.policy.tiny import tiny_vlm_dir  # noqa: E402
from worker.supervisor import child_env  # noqa: E402

FEATURES = {
    "state_dim": 6,
    "action_dim": 6,
    "camera_keys": ["observation.images.front"],
    "camera_resolutions": {"observation.images.front": [24, 32, 3]},
    "fps": 30,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=2)
    args = parser.parse_args()

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
    try:
        with Session(engine) as session:
            site_ids = []
            for i in (1, 2):
                name = f"site-{i}"
                dataset = generate_dataset(
                    root / "datasets" / name,
                    SyntheticSpec(episodes=3, frames_per_episode=8, seed=i),
                )
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
            while sum(n.online for n in list_nodes(settings)) < 2:
                time.sleep(0.5)
            experiment = experiments.create_experiment(
                session=session,
                data=ExperimentCreate.model_validate(
                    {
                        "name": "bench-deployment",
                        "policy": "tiny",
                        "mode": "deployment",
                        "site_ids": site_ids,
                        "min_clients": 2,
                        "num_rounds": args.rounds,
                        "local_steps": args.local_steps,
                        "batch_size": 2,
                        "eval_every": 0,
                        "device": "cpu",
                    }
                ),
            )
            config = runs.freeze_config(session, experiment)
            assert experiment.id is not None
            run = Run(experiment_id=experiment.id, config=config.model_dump(mode="json"))
            session.add(run)
            session.commit()
            run_id = run.id

        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", "worker.run_child", str(run_id)], env=child_env(settings)
        )
        marks: dict[str, float] = {}
        with Session(engine) as session:
            while child.poll() is None:
                now = time.monotonic() - started
                events = session.exec(
                    select(RunEvent.message).where(RunEvent.run_id == run_id)
                ).all()
                if "federation_started" not in marks and any(
                    "federation started" in e for e in events
                ):
                    marks["federation_started"] = now
                rounds = session.exec(
                    select(RoundMetric.round).where(RoundMetric.run_id == run_id)
                ).all()
                for r in rounds:
                    marks.setdefault(f"round_{r}", now)
                session.expire_all()
                time.sleep(0.25)
        marks["finished"] = time.monotonic() - started
        with Session(engine) as session:
            done = session.exec(
                select(RoundMetric.round)
                .where(RoundMetric.run_id == run_id)
                .order_by(col(RoundMetric.round))
            ).all()
        result = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, no GPU used)",
            "sites": 2,
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "policy": "tiny",
            "exit_code": child.returncode,
            "rounds_in_database": list(done),
            "seconds_from_process_start": {k: round(v, 1) for k, v in marks.items()},
        }
        out = ROOT / "bench" / "results" / "deployment_run.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0 if child.returncode == 0 else 1
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, 15)
                node.wait(30)
        superlink.stop()
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())

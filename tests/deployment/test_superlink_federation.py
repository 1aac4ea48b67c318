"""A real deployment federation on loopback: our SuperLink (TLS, SuperNode authentication), two
site nodes (flower-supernode with the warm site trainer) with their own synthetic datasets and
keys, the tiny policy, two rounds reported into the database and the policy built once per site;
an unregistered and a revoked node refused."""

import io
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import (
    Checkpoint,
    ClientMetric,
    RoundMetric,
    Run,
    RunEvent,
    Site,
    SiteStatus,
)
from fedvla.core.schemas.sites import SiteCreate
from fedvla.core.services import run_files
from fedvla.core.services import runs as run_service
from fedvla.core.services import sites as site_service
from fedvla.orchestration.deployment.exchange_log import read_exchanges
from fedvla.orchestration.deployment.local_nodes import free_port, start_superlink, start_supernode
from fedvla.orchestration.site_node import PULL_LOG_PREFIX, read_task_records
from fedvla.orchestration.supervisor import child_env
from fedvla.sites import node_registry, startup_kit, superlink_admin
from fedvla.sites.keys import NodeKeyFiles, generate_node_keys
from fedvla.sites.superlink import SuperLinkProcess, list_nodes, run_status
from tests.factories import deployment_body, make_experiment, site_body

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _features(camera: str = "front") -> dict[str, object]:
    key = f"observation.images.{camera}"
    return {
        "state_dim": 6,
        "action_dim": 6,
        "camera_keys": [key],
        "camera_resolutions": {key: [24, 32, 3]},
        "fps": 30,
    }


NODE_EXIT_TIMEOUT_S = 300
"""A refused node exits once Flower gives up; at a load of 13 on 2 CPUs that took over 120 s."""


@dataclass
class Deployment:
    settings: Settings
    session: Session
    superlink: SuperLinkProcess
    root: Path
    nodes: list[subprocess.Popen[bytes]]

    def site(
        self, name: str, dataset: Path, status: SiteStatus, camera: str = "front"
    ) -> tuple[Site, NodeKeyFiles]:
        keys = generate_node_keys(self.root / name / "keys")
        site = site_service.create_site(
            session=self.session,
            data=SiteCreate.model_validate(
                site_body(
                    name=name,
                    dataset=str(dataset),
                    features=_features(camera),
                    public_key=keys.public_pem.read_text(),
                )
            ),
            actor="tests",
        )
        if status != SiteStatus.pending:
            site_service.set_status(
                session=self.session, site=site, status=SiteStatus.approved, actor="t", reason=""
            )
        if status == SiteStatus.revoked:
            site_service.set_status(
                session=self.session, site=site, status=status, actor="t", reason="left"
            )
        return site, keys

    def start_node(
        self, site: Site, keys: NodeKeyFiles, camera_map: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """The site node exactly as the site's startup kit says (its camera map, unless the
        kit's is given), in the site's folder."""
        node = start_supernode(
            self.settings,
            site,
            camera_map=(
                startup_kit.kit_camera_map(self.session, site) if camera_map is None else camera_map
            ),
            key=keys.private_key,
            ca=self.root / "kit-ca.crt",
            folder=self.root / site.name,
            data_dir=self.root / "site-data",
        )
        self.nodes.append(node)
        return node


@pytest.fixture
def deployment(sqlite_url: str, tmp_path: Path) -> Iterator[Deployment]:
    from fedvla.engine.policy.tiny import tiny_vlm_dir

    settings = Settings(
        environment="test",
        data_dir=tmp_path / "server",
        database_url=sqlite_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        redis_url="",
        superlink_port=free_port(),
        fleet_port=free_port(),
    )
    tiny_vlm_dir(settings.data_dir)
    tiny_vlm_dir(tmp_path / "site-data")
    superlink = start_superlink(settings)
    engine = make_engine(settings.database_url)
    session = Session(engine)
    world = Deployment(settings, session, superlink, tmp_path, [])
    try:
        (tmp_path / "kit-ca.crt").write_bytes(
            superlink_tls_ca(settings).read_bytes()  # what the kit ships
        )
        yield world
    finally:
        for node in world.nodes:
            if node.poll() is None:
                os.killpg(node.pid, 15)
                node.wait(30)
        superlink.stop()
        session.close()
        engine.dispose()


def superlink_tls_ca(settings: Settings) -> Path:
    from fedvla.sites.superlink import tls_files

    return tls_files(settings).ca_certificate


def _wait_online(settings: Settings, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(n.online for n in list_nodes(settings)) < count:
        assert time.monotonic() < deadline, list_nodes(settings)
        time.sleep(1)


def _run_child(
    settings: Settings, run_id: int, timeout_s: float
) -> "subprocess.CompletedProcess[str]":
    """The run's federation process, as a worker starts it, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "fedvla.orchestration.run_child", str(run_id)],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _refused(node: subprocess.Popen[bytes], log: Path) -> str:
    code = node.wait(NODE_EXIT_TIMEOUT_S)
    assert code != 0
    return log.read_text()


def test_two_sites_train_two_rounds_on_our_superlink(
    deployment: Deployment, tmp_path: Path
) -> None:
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset

    data = [
        generate_dataset(
            tmp_path / "datasets" / f"site{i}",
            SyntheticSpec(episodes=3, frames_per_episode=8, seed=i, cameras=(camera,)),
        )
        for i, camera in ((1, "front"), (2, "wrist"))
    ]
    settings, session = deployment.settings, deployment.session
    first, first_keys = deployment.site("lab-a", data[0], SiteStatus.approved)
    # lab-b's camera is 'wrist': its kit maps it to the experiment's 'front' (camera-map).
    second, second_keys = deployment.site("lab-b", data[1], SiteStatus.approved, camera="wrist")
    revoked, revoked_keys = deployment.site("lab-r", data[0], SiteStatus.approved)
    bystander, bystander_keys = deployment.site("lab-x", data[0], SiteStatus.approved)
    stranger_keys = generate_node_keys(tmp_path / "stranger" / "keys")

    sync = node_registry.sync_registrations(session, settings)
    assert sorted(sync.registered) == ["lab-a", "lab-b", "lab-r", "lab-x"]
    site_service.set_status(
        session=session, site=revoked, status=SiteStatus.revoked, actor="t", reason="left"
    )
    assert len(node_registry.sync_registrations(session, settings).unregistered) == 1

    # A node whose key was never registered, and the revoked site's node: both refused.
    stranger_site = Site(name="stranger", dataset=str(data[0]), features=_features(), id=0)
    (tmp_path / "stranger").mkdir(exist_ok=True)
    stranger = deployment.start_node(stranger_site, stranger_keys)
    refused = deployment.start_node(revoked, revoked_keys)
    assert "Failed to activate SuperNode" in _refused(
        stranger, tmp_path / "stranger" / "supernode.log"
    )
    assert "Failed to activate SuperNode" in _refused(refused, tmp_path / "lab-r" / "supernode.log")
    assert superlink_admin.site_node(settings, revoked).registered is False
    # Approved again with the same key: Flower never admits an unregistered key again, and the
    # site page says so, with the SuperLink's reason for refusing its node (from its log).
    site_service.set_status(
        session=session, site=revoked, status=SiteStatus.approved, actor="t", reason="back"
    )
    assert node_registry.sync_registrations(session, settings).needs_new_key == ["lab-r"]
    shown = superlink_admin.site_node(settings, revoked)
    assert (shown.status, shown.registered) == ("key needed", False)
    assert shown.hint and "new key pair" in shown.hint
    assert shown.refused == "No SuperNode found with the given public key."
    assert shown.refused_at is not None

    assert first.id is not None and second.id is not None
    experiment = make_experiment(
        session,
        deployment_body(
            [first.id, second.id],
            num_rounds=2,
            local_steps=2,
            batch_size=2,
            eval_batches=1,
            # Evaluation as by default: each site on its own held-out episode (1 of its 3), and
            # the coordinator on the data it has.
            eval_datasets=[{"repo_id": "synthetic/so100", "root": str(data[0]), "episodes": [0]}],
            checkpoint_every=1,
            device="cpu",
        ),
    )
    assert startup_kit.kit_camera_map(session, second) == {
        "observation.images.wrist": "observation.images.front"
    }
    deployment.start_node(first, first_keys)
    # The second site's kit was downloaded before it joined the experiment: no camera map in its
    # node config. The server sends it with each message of the run.
    deployment.start_node(second, second_keys, camera_map={})
    deployment.start_node(bystander, bystander_keys)  # approved, online, not in the experiment
    _wait_online(settings, 3)
    node = superlink_admin.site_node(settings, first)
    assert node.registered and node.online and node.last_seen and node.refused is None
    # The last heartbeat: within Flower's heartbeat interval of now, not the connection time.
    assert (datetime.now(UTC) - node.last_seen).total_seconds() < 60

    config = run_service.freeze_config(session, experiment)
    assert experiment.id is not None
    run = Run(experiment_id=experiment.id, config=config.model_dump(mode="json"))
    session.add(run)
    session.commit()
    assert run.id is not None
    child = _run_child(settings, run.id, timeout_s=800)
    events = [e.message for e in session.exec(select(RunEvent).where(RunEvent.run_id == run.id))]
    assert child.returncode == 0, child.stderr[-3000:] + "\n".join(events)

    rounds = session.exec(
        select(RoundMetric).where(RoundMetric.run_id == run.id).order_by(col(RoundMetric.round))
    ).all()
    assert [r.round for r in rounds] == [0, 1, 2]  # round 0: the initial policy, as in simulation
    assert all(r.clients_succeeded == 2 and r.clients_failed == 0 for r in rounds[1:])
    # Deployment runs evaluate: the server on its data every round (0 included), the sites on
    # their own held-out episodes after each round's training; reported apart.
    assert all(r.eval_loss is not None and r.eval_action_mse is not None for r in rounds)
    assert rounds[0].fed_eval_loss is None
    assert all(r.fed_eval_loss is not None and r.fed_eval_samples > 0 for r in rounds[1:])
    clients = session.exec(select(ClientMetric).where(ClientMetric.run_id == run.id)).all()
    assert all(c.eval_loss is not None and c.eval_samples > 0 for c in clients)
    assert sorted((c.round, c.client) for c in clients) == [
        (1, "lab-a"),
        (1, "lab-b"),
        (2, "lab-a"),
        (2, "lab-b"),
    ]
    assert all(c.ok and c.samples > 0 and c.bytes_received > 0 for c in clients)
    assert {c.client: c.site_id for c in clients} == {"lab-a": first.id, "lab-b": second.id}
    checkpoints = session.exec(select(Checkpoint).where(Checkpoint.run_id == run.id)).all()
    assert {1, 2} <= {c.round for c in checkpoints}
    assert all(Path(c.path, "model.safetensors").is_file() for c in checkpoints)
    assert any("Flower run" in message for message in events)
    # The ServerApp's log (Flower's rounds included) is in the run's federation.log.
    log = run_files.federation_log(run_files.run_dir_of(session, settings, run.id)).read_text()
    assert f"ServerApp of run {run.id} on the SuperLink" in log
    assert "[ROUND 2/2]" in log
    # And what each exchange through the SuperLink cost it: the query, then per round a train
    # and an evaluate, each with both sites' replies.
    exchanges = read_exchanges(log)
    assert [(e["message_type"], e["messages"], e["replies"]) for e in exchanges] == [
        ("query", 2, 2),
        *[(kind, 2, 2) for _ in (1, 2) for kind in ("train", "evaluate")],
    ], exchanges
    assert all(e["push_seconds"] > 0 and e["until_last_reply_seconds"] > 0 for e in exchanges)
    assert all(0 < e["pull_seconds"] <= e["until_last_reply_seconds"] for e in exchanges)

    # Each site's warm trainer built its policy once and served every message in one process:
    # the describe query and both rounds' training (from the site node's own log).
    for name in ("lab-a", "lab-b"):
        tasks = read_task_records((tmp_path / name / "supernode.log").read_text())
        kinds = [t["message_type"] for t in tasks]
        assert kinds == ["query", "train", "evaluate", "train", "evaluate"], tasks
        assert all(t["ok"] for t in tasks)
        assert [t["policies_built"] for t in tasks] == [1] * 5
        assert len({t["trainer_pid"] for t in tasks}) == 1
        assert all(t["train_seconds"] > 0 for t in tasks if t["message_type"] == "train")
        # The update travels packed and the statistics in the config: a train or evaluate
        # message is 6 objects (unpacked, the tiny policy's 29 tensors and 20 statistics were
        # over 60; with the statistics in an ArrayRecord of their own, 9).
        log = (tmp_path / name / "supernode.log").read_text()
        pulls = read_task_records(log, PULL_LOG_PREFIX)
        assert len(pulls) == 5, pulls
        assert all(p["objects"] <= 6 for p in pulls), pulls


def _queued_run(deployment: Deployment, dataset: Path, names: list[str]) -> Run:
    """A one-round run of a new experiment of new approved sites."""
    sites = [deployment.site(name, dataset, SiteStatus.approved)[0] for name in names]
    ids = [site.id for site in sites if site.id is not None]
    experiment = make_experiment(deployment.session, deployment_body(ids, num_rounds=1))
    assert experiment.id is not None
    config = run_service.freeze_config(deployment.session, experiment)
    run = Run(experiment_id=experiment.id, config=config.model_dump(mode="json"))
    deployment.session.add(run)
    deployment.session.commit()
    return run


def test_a_run_whose_site_nodes_stay_away_fails_naming_them(
    deployment: Deployment, tmp_path: Path
) -> None:
    settings = deployment.settings.model_copy(update={"node_wait_s": 6.0})
    session = deployment.session
    run = _queued_run(deployment, tmp_path, ["lab-e", "lab-f"])

    started = time.monotonic()
    assert run.id is not None
    child = _run_child(settings, run.id, timeout_s=300)
    elapsed = time.monotonic() - started

    assert child.returncode == 1
    assert (
        "site nodes not online after 6 s (0 of the 2 needed): missing lab-e (registered), "
        "lab-f (registered)"
    ) in child.stdout + child.stderr
    assert elapsed < 120, elapsed  # bounded by node_wait_s, not an hour
    events = session.exec(select(RunEvent.message).where(RunEvent.run_id == run.id)).all()
    assert any(m.startswith("waiting for site nodes (0 of 2 online") for m in events), events
    started_event = next(m for m in events if "federation started" in m)
    match = re.search(r"Flower run (\d+)", started_event)
    assert match is not None  # and the Flower run was stopped, not left waiting
    assert run_status(settings, int(match.group(1)))[:2] == ("finished", "stopped")


def test_cancel_stops_the_flower_run_on_the_superlink(
    deployment: Deployment, tmp_path: Path
) -> None:
    import signal

    settings, session = deployment.settings, deployment.session
    run = _queued_run(deployment, tmp_path, ["lab-c", "lab-d"])

    # No node is online: the ServerApp waits for them until the run is cancelled.
    child = subprocess.Popen(
        [sys.executable, "-m", "fedvla.orchestration.run_child", str(run.id)],
        env=child_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    started = None
    while started is None:
        assert time.monotonic() < deadline and child.poll() is None
        session.expire_all()
        messages = session.exec(select(RunEvent.message).where(RunEvent.run_id == run.id)).all()
        started = next((m for m in messages if "federation started" in m), None)
        time.sleep(0.5)
    match = re.search(r"Flower run (\d+)", started)
    assert match is not None
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=60)

    assert child.returncode == 1
    assert f"cancelled: Flower run {match.group(1)} stopped" in output
    assert run_status(settings, int(match.group(1)))[:2] == ("finished", "stopped")


def test_a_re_keyed_site_is_in_the_experiments_nodes_once_approved_again(
    deployment: Deployment, tmp_path: Path
) -> None:
    """What the ServerApp's grid reads while a run goes on: no restart for a new key."""
    from fedvla.core.schemas.sites import SiteUpdate
    from fedvla.orchestration.deployment.experiment_grid import experiment_nodes

    settings, session = deployment.settings, deployment.session
    site, _ = deployment.site("lab-g", tmp_path, SiteStatus.approved)
    assert site.id is not None
    node_registry.sync_registrations(session, settings)
    [old] = experiment_nodes(settings, [site.id])

    new_keys = generate_node_keys(tmp_path / "lab-g" / "new-keys")
    site_service.update_site(
        session=session,
        site=site,
        data=SiteUpdate(public_key=new_keys.public_pem.read_text()),
        actor="t",
    )
    node_registry.sync_registrations(session, settings)
    assert experiment_nodes(settings, [site.id]) == {}  # pending: its old node unregistered
    assert superlink_admin.site_node(settings, site).status == "not registered"
    site_service.set_status(
        session=session, site=site, status=SiteStatus.approved, actor="t", reason="new key"
    )
    assert node_registry.sync_registrations(session, settings).registered == ["lab-g"]

    [(new, name)] = experiment_nodes(settings, [site.id]).items()
    assert (name, new != old) == ("lab-g", True)
    assert superlink_admin.site_node(settings, site).status == "registered"


def test_two_nodes_start_on_one_host_from_two_unzipped_kits_as_shipped(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The operator's path with no edits: keygen in a folder, register, approve, unzip the kit
    there, `sh fedvla-site/supernode.sh`. Two sites on one host differ only by
    FEDVLA_SUPERNODE_PORT; fedvla is not on PATH (the script runs the Python keygen noted)."""
    settings = deployment.settings.model_copy(
        update={"superlink_public_address": f"127.0.0.1:{deployment.settings.fleet_port}"}
    )
    session = deployment.session
    fedvla = str(Path(sys.executable).parent / "fedvla")
    bare = {**os.environ, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    bare.pop("VIRTUAL_ENV", None)
    sites: list[Site] = []
    for name in ("kit-a", "kit-b"):
        folder = tmp_path / name
        folder.mkdir()
        keygen = subprocess.run(
            [fedvla, "site", "keygen", "keys"], cwd=folder, capture_output=True, text=True
        )
        assert keygen.returncode == 0, keygen.stderr
        site = site_service.create_site(
            session=session,
            data=SiteCreate.model_validate(
                site_body(
                    name=name,
                    dataset=str(tmp_path / "dataset"),
                    features=_features(),
                    public_key=keygen.stdout,
                )
            ),
            actor="tests",
        )
        site_service.set_status(
            session=session, site=site, status=SiteStatus.approved, actor="t", reason=""
        )
        with zipfile.ZipFile(io.BytesIO(startup_kit.build_kit(session, settings, site))) as kit:
            kit.extractall(folder)
        sites.append(site)
    assert sorted(node_registry.sync_registrations(session, settings).registered) == [
        "kit-a",
        "kit-b",
    ]

    for site in sites:
        script = tmp_path / site.name / "fedvla-site" / "supernode.sh"
        log = (tmp_path / site.name / "node.log").open("wb")
        deployment.nodes.append(
            subprocess.Popen(
                ["sh", str(script)],
                env={**bare, "FEDVLA_SUPERNODE_PORT": str(free_port())},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 120
    while not all(superlink_admin.site_node(settings, s).online for s in sites):
        for site, node in zip(sites, deployment.nodes, strict=True):
            assert node.poll() is None, (tmp_path / site.name / "node.log").read_text()
        assert time.monotonic() < deadline, "the kits' nodes did not come online"
        time.sleep(1)


def test_a_kit_started_without_its_keys_says_where_they_go(
    deployment: Deployment, tmp_path: Path
) -> None:
    settings = deployment.settings.model_copy(
        update={"superlink_public_address": f"127.0.0.1:{deployment.settings.fleet_port}"}
    )
    site, _ = deployment.site("kit-c", tmp_path, SiteStatus.approved)
    with zipfile.ZipFile(
        io.BytesIO(startup_kit.build_kit(deployment.session, settings, site))
    ) as kit:
        kit.extractall(tmp_path / "unzipped")

    started = subprocess.run(
        ["sh", str(tmp_path / "unzipped" / "fedvla-site" / "supernode.sh")],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert started.returncode == 2
    assert "run 'fedvla site keygen keys' in the folder you unzipped it into" in started.stderr

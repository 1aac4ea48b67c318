"""Rows made through the real services, for tests that need them to exist."""

import hashlib
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.models import (
    Experiment,
    ExperimentSite,
    Role,
    Run,
    RunStatus,
    Site,
    SiteStatus,
    utcnow,
)
from fedvla.core.schemas.experiments import ExperimentCreate
from fedvla.core.schemas.sites import SiteCreate
from fedvla.core.services import experiments as experiment_service
from fedvla.core.services import runs as run_service
from fedvla.core.services import sites as site_service
from fedvla.core.services import tokens as token_service
from fedvla.core.services import workers as worker_service
from fedvla.core.services.events import publisher_for
from fedvla.engine.federation.reporter import CheckpointReport, ClientReport, RoundReport
from fedvla.orchestration.db_reporter import DbReporter
from fedvla.orchestration.dispatch import run_sender

_numbers = count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_numbers)}"


def public_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def site_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique("site"),
        "organisation": "Test Lab",
        "robot_type": "so100",
        "dataset": "test/so100_pick",
        "features": {"state_dim": 6, "action_dim": 6, "fps": 30, "camera_keys": ["top"]},
        "public_key": public_key_pem(),
    }
    return {**body, **overrides}


def simulation_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique("experiment"),
        "policy": "tiny",
        "num_rounds": 2,
        "min_clients": 2,
        "partition": {"dataset": {"repo_id": "test/so100_pick"}, "num_clients": 2},
    }
    return {**body, **overrides}


def deployment_body(site_ids: list[int], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": unique("deployment"),
        "policy": "tiny",
        "mode": "deployment",
        "min_clients": len(site_ids),
        "site_ids": site_ids,
    }
    return {**body, **overrides}


def make_site(session: Session, **overrides: Any) -> Site:
    return site_service.create_site(
        session=session, data=SiteCreate.model_validate(site_body(**overrides)), actor="tests"
    )


def make_experiment(session: Session, body: dict[str, Any] | None = None) -> Experiment:
    data = ExperimentCreate.model_validate(body or simulation_body())
    return experiment_service.create_experiment(session=session, data=data)


def make_token(session: Session, role: Role, site_id: int | None = None) -> str:
    """A live token's secret."""
    _, secret = token_service.create_token(
        session=session, name=unique(role.value), role=role, site_id=site_id
    )
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def finish_with_reports(session: Session, database_url: str, run_id: int, folder: Path) -> None:
    """Takes a queued run through what a worker does: claim, one round, one checkpoint (a real
    file in ``folder``), success, and registers that worker."""
    publisher = publisher_for("")
    worker_service.register(session, name="worker-a", host="gpu-a", queue="gpu", gpus=[])
    assert run_service.claim_run(session, publisher, run_id, "worker-a")
    weights = folder / "model.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"weights")
    reporter = DbReporter(database_url, "", run_id)
    try:
        client = ClientReport(client="client-0", site_id=None, ok=True, train_loss=0.5, samples=8)
        reporter.round_finished(RoundReport(1, 0.5, 0.4, 1.0, 10, 10, 1, 1, 0, [client]))
        digest = hashlib.sha256(b"weights").hexdigest()
        reporter.checkpoint_saved(CheckpointReport(1, str(folder), digest, 7, 0.4))
    finally:
        reporter.close()
    assert run_service.finish_run(session, publisher, run_id, RunStatus.succeeded)


def finished_run(session: Session, settings: Settings, folder: Path) -> Run:
    """A run of a new experiment, taken through one round and one checkpoint to success."""
    experiment = make_experiment(session)
    assert experiment.id is not None
    run = run_service.launch_run(
        session, run_sender(settings), publisher_for(""), experiment_id=experiment.id, actor="tests"
    )
    assert run.id is not None
    finish_with_reports(session, settings.database_url, run.id, folder)
    return run


def launch_quietly(session: Session, settings: Settings, experiment_id: int) -> Run:
    """A queued run, sent to a queue no worker reads; a deployment's sites are approved first."""
    links = session.exec(
        select(ExperimentSite.site_id).where(ExperimentSite.experiment_id == experiment_id)
    ).all()
    for site_id in links:
        site = site_service.get_site(session=session, site_id=site_id)
        if site.status != SiteStatus.approved:
            site_service.set_status(
                session=session, site=site, status=SiteStatus.approved, actor="tests", reason=""
            )
    quiet = settings.model_copy(update={"gpu_queue": "nobody-listens"})
    return run_service.launch_run(
        session, run_sender(quiet), publisher_for(""), experiment_id=experiment_id, actor="tests"
    )


def run_rounds(
    session: Session,
    settings: Settings,
    run: Run,
    losses: list[tuple[float | None, float]],
    seconds: float,
) -> None:
    """What a worker does: claim, report rounds (eval, train loss), finish after ``seconds``."""
    assert run.id is not None
    assert run_service.claim_run(session, publisher_for(""), run.id, "worker-1")
    reporter = DbReporter(settings.database_url, "", run.id)
    try:
        for number, (eval_loss, train_loss) in enumerate(losses, start=1):
            clients = [
                ClientReport(
                    client=f"client-{i}", site_id=None, ok=True, train_loss=train_loss + i,
                    samples=8, episodes=1, seconds=0.5,
                )
                for i in range(2)
            ]  # fmt: skip
            reporter.round_finished(
                RoundReport(number, train_loss, eval_loss, 1.0, 10, 20, 2, 2, 0, clients)
            )
    finally:
        reporter.close()
    assert run_service.finish_run(session, publisher_for(""), run.id, RunStatus.succeeded)
    started = utcnow() - timedelta(seconds=seconds)
    session.execute(
        update(Run)
        .where(col(Run.id) == run.id)
        .values(started_at=started, finished_at=started + timedelta(seconds=seconds))
    )
    session.commit()

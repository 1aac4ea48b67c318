"""A run's life: launch, claim by a worker, heartbeats, finish, cancel, and reaping lost runs.

The REST API, the web pages and the Celery worker all change runs through these functions only.
Every status change is a conditional UPDATE (``... WHERE status = <expected>``), so a cancel that
races a worker's claim or finish has exactly one winner, and each change appends a status event
in the same transaction.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from anyio import to_thread
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.errors import Conflict, FieldProblem, Forbidden, NotFound, Unavailable
from fedvla.core.experiment_config import FederationConfig, ResumePoint
from fedvla.core.models import (
    ApiToken,
    Checkpoint,
    ClientMetric,
    Experiment,
    ExperimentSite,
    Role,
    RoundMetric,
    Run,
    RunEvent,
    RunStatus,
    Site,
    SiteStatus,
    utcnow,
)
from fedvla.core.services import compatibility, experiments, preflight
from fedvla.core.services.events import EventPublisher, append_event, events_after, publisher_for

log = logging.getLogger(__name__)

LOST_RUN_ERROR = "worker lost: no heartbeat for {seconds:.0f} s"


class BrokerDown(Unavailable):
    def __init__(self, reason: str) -> None:
        super().__init__(
            "The task broker is unreachable; the run was not created. Try again later.",
            [FieldProblem(field="broker", reason=reason)],
        )


RunSender = Callable[[int], str]
"""Queues a run on the GPU queue and returns its task id; raises BrokerDown when the broker does
not take it (fedvla.orchestration.dispatch.run_sender builds the one the app uses)."""


@dataclass(frozen=True)
class ResumeFrom:
    run_id: int
    round: int


def _set_status(
    session: Session,
    run_id: int,
    expected: Sequence[RunStatus],
    values: dict[str, Any],
    message: str,
    extra_where: Sequence[Any] = (),
) -> RunEvent | None:
    """Moves a run out of one of ``expected`` states; None when another writer got there first."""
    result = session.execute(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status).in_(expected), *extra_where)
        .values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    status = values["status"]
    data = {"status": str(status), "error": values.get("error")}
    return append_event(session, run_id, "status", message, data)


def _commit(session: Session, publisher: EventPublisher, *events: RunEvent | None) -> None:
    session.commit()
    publisher.publish([event for event in events if event is not None])


# --------------------------------------------------------------------------- launch


def _deployment_problems(experiment: Experiment, sites: Sequence[Site]) -> list[FieldProblem]:
    """Why the sites of a deployment experiment cannot train together, if they cannot."""
    if not sites:
        return [FieldProblem(field="sites", reason="a deployment experiment needs sites")]
    problems = [
        FieldProblem(field="sites", reason=f"site {site.name!r} (id {site.id}) is {site.status}")
        for site in sites
        if site.status != SiteStatus.approved
    ]
    problems += compatibility.launch_problems(experiment, sites)
    return problems


def _resume_point(
    session: Session, experiment: Experiment, resume: ResumeFrom, num_rounds: int
) -> ResumePoint:
    source = session.get(Run, resume.run_id)
    if source is None:
        raise Conflict(
            f"Run {resume.run_id} does not exist", field="resume_from.run_id", reason="no such run"
        )
    if source.experiment_id != experiment.id:
        raise Conflict(
            f"Run {resume.run_id} belongs to experiment {source.experiment_id}, "
            f"not {experiment.id}",
            field="resume_from.run_id",
            reason=f"a run of experiment {source.experiment_id}",
        )
    checkpoint = session.exec(
        select(Checkpoint).where(
            Checkpoint.run_id == resume.run_id, Checkpoint.round == resume.round
        )
    ).first()
    if resume.round >= num_rounds:
        raise Conflict(
            f"Round {resume.round} is not before the experiment's last round ({num_rounds}): "
            "nothing is left to run",
            field="resume_from.round",
            reason=f"round {resume.round} is the end of a {num_rounds}-round experiment; fix: "
            "resume from an earlier round, or raise num_rounds",
        )
    if checkpoint is None:
        kept = session.exec(
            select(Checkpoint.round)
            .where(Checkpoint.run_id == resume.run_id)
            .order_by(col(Checkpoint.round))
        ).all()
        kept_rounds = list(kept) or "none"
        raise Conflict(
            f"Run {resume.run_id} has no checkpoint of round {resume.round} "
            f"(kept rounds: {kept_rounds})",
            field="resume_from.round",
            reason=f"no checkpoint of this round (kept rounds: {kept_rounds})",
        )
    return ResumePoint(checkpoint_dir=str(Path(checkpoint.path).parent), round=resume.round)


def freeze_config(
    session: Session, experiment: Experiment, resume: ResumeFrom | None = None
) -> FederationConfig:
    """The experiment as the engine will run it; Conflict, with reasons, if it cannot run now."""
    config = experiments.config_of(session=session, experiment=experiment)
    if config.mode == "deployment":
        sites = session.exec(
            select(Site).where(col(Site.id).in_(config.site_ids)).order_by(col(Site.id))
        ).all()
        problems = _deployment_problems(experiment, sites)
        if problems:
            raise Conflict("The experiment's sites cannot run together", problems)
    problems = preflight.problems(config)
    if problems:
        raise Conflict("The experiment's policy or data cannot be used now", problems)
    if resume is not None:
        config = FederationConfig.model_validate(
            {
                **config.model_dump(),
                "resume_from": _resume_point(session, experiment, resume, config.num_rounds),
            }
        )
    return config


def launch_run(
    session: Session,
    send: RunSender,
    publisher: EventPublisher,
    *,
    experiment_id: int,
    resume: ResumeFrom | None = None,
    actor: str,
) -> Run:
    """Freezes the experiment into a queued run and sends it to the GPU queue.

    The task is sent before the run is committed: a broker that is down leaves no run behind
    (BrokerDown). A worker that receives the task before the commit retries until the run appears.
    """
    experiment = experiments.get_experiment(session=session, experiment_id=experiment_id)
    config = freeze_config(session, experiment, resume)
    run = Run(
        experiment_id=experiment_id,
        config=config.model_dump(mode="json"),
        status=RunStatus.queued,
        resumed_from_run_id=resume.run_id if resume else None,
        resumed_from_round=resume.round if resume else None,
    )
    session.add(run)
    session.flush()
    assert run.id is not None
    source = f", resuming run {resume.run_id} from round {resume.round}" if resume else ""
    event = append_event(
        session, run.id, "status", f"queued by {actor}{source}", {"status": "queued"}
    )
    try:
        run.task_id = send(run.id)
    except BrokerDown:
        session.rollback()
        raise
    _commit(session, publisher, event)
    session.refresh(run)
    return run


# --------------------------------------------------------------------------- reading


def get_run(session: Session, run_id: int, token: ApiToken | None = None) -> Run:
    """The run; NotFound if unknown, Forbidden if an operator's site is not in its experiment."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound("Run")
    if token is not None and not experiments.can_read(
        session=session, token=token, experiment_id=run.experiment_id
    ):
        raise Forbidden("This site does not take part in the run's experiment")
    return run


def _operator_experiments(token: ApiToken) -> Any:
    return select(ExperimentSite.experiment_id).where(ExperimentSite.site_id == token.site_id)


def list_runs(
    session: Session,
    token: ApiToken,
    *,
    status: RunStatus | None = None,
    experiment_id: int | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[Sequence[Run], int]:
    query = select(Run)
    if status is not None:
        query = query.where(Run.status == status)
    if experiment_id is not None:
        query = query.where(Run.experiment_id == experiment_id)
    if token.role == Role.operator:
        query = query.where(col(Run.experiment_id).in_(_operator_experiments(token)))
    count = session.exec(select(func.count()).select_from(query.subquery())).one()
    runs = session.exec(query.order_by(col(Run.id).desc()).offset(offset).limit(limit)).all()
    return runs, count


def round_metrics(session: Session, run_id: int) -> Sequence[RoundMetric]:
    return session.exec(
        select(RoundMetric).where(RoundMetric.run_id == run_id).order_by(col(RoundMetric.round))
    ).all()


def client_metrics(
    session: Session, run_id: int, round: int | None = None
) -> Sequence[ClientMetric]:
    query = select(ClientMetric).where(ClientMetric.run_id == run_id)
    if round is not None:
        query = query.where(ClientMetric.round == round)
    return session.exec(query.order_by(col(ClientMetric.round), col(ClientMetric.client))).all()


def run_events(
    session: Session, run_id: int, after_id: int = 0, limit: int = 100
) -> tuple[Sequence[RunEvent], bool]:
    """A page of events after ``after_id``, and whether the run is final with none after them.

    The status is read before the events: everything a final run wrote is then in the page.
    """
    final = run_status(session, run_id).is_final
    events = events_after(session, run_id, after_id, limit)
    return events, final and len(events) < limit


# --------------------------------------------------------------------------- lifecycle


def cancel_run(session: Session, publisher: EventPublisher, run_id: int, *, actor: str) -> Run:
    """Cancels a queued or running run; its worker then stops the federation. Conflict if final."""
    run = get_run(session, run_id)
    event = _set_status(
        session,
        run_id,
        (RunStatus.queued, RunStatus.running),
        {"status": RunStatus.cancelled, "finished_at": utcnow()},
        f"cancelled by {actor}",
    )
    if event is None:
        session.refresh(run)
        raise Conflict(
            f"Run {run_id} already finished ({run.status})",
            field="status",
            reason=f"already {run.status}",
        )
    _commit(session, publisher, event)
    session.refresh(run)
    return run


class RunMissing(LookupError):
    """A worker received a task for a run that is not (or not yet) in the database."""


def claim_run(session: Session, publisher: EventPublisher, run_id: int, worker: str) -> bool:
    """A worker takes a queued run (queued -> running); False if it is no longer queued."""
    if session.get(Run, run_id) is None:
        raise RunMissing(f"run {run_id} not found")
    now = utcnow()
    event = _set_status(
        session,
        run_id,
        (RunStatus.queued,),
        {"status": RunStatus.running, "worker": worker, "started_at": now, "heartbeat_at": now},
        f"running on {worker}",
    )
    if event is None:
        return False
    _commit(session, publisher, event)
    return True


def heartbeat(session: Session, run_id: int) -> RunStatus:
    """Stamps a running run's heartbeat and returns its status (cancelled: stop the federation)."""
    session.execute(
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status) == RunStatus.running)
        .values(heartbeat_at=utcnow())
    )
    session.commit()
    status = session.exec(select(Run.status).where(Run.id == run_id)).one()
    return RunStatus(status)


def run_status(session: Session, run_id: int) -> RunStatus:
    return RunStatus(session.exec(select(Run.status).where(Run.id == run_id)).one())


def results_committed(session: Session, run_id: int) -> bool:
    """Whether the run's final round and its final checkpoint are in the database."""
    config = session.exec(select(Run.config).where(Run.id == run_id)).one()
    last = int(config["num_rounds"])
    final_round = select(RoundMetric.id).where(
        RoundMetric.run_id == run_id, RoundMetric.round == last
    )
    final_checkpoint = select(Checkpoint.id).where(
        Checkpoint.run_id == run_id, Checkpoint.round == last
    )
    return (
        session.exec(final_round).first() is not None
        and session.exec(final_checkpoint).first() is not None
    )


def _ending(
    session: Session, run_id: int, status: RunStatus, error: str | None
) -> tuple[dict[str, Any], str]:
    """The row values and event message that end a running run.

    A run whose final round and checkpoint are committed succeeded, whatever happened to its
    process or worker afterwards (a crash while shutting down, a kill, a lost heartbeat).
    """
    if status == RunStatus.failed and results_committed(session, run_id):
        message = f"succeeded: its final round and checkpoint were committed before {error}"
        status, error = RunStatus.succeeded, None
    else:
        message = "succeeded" if status == RunStatus.succeeded else f"failed: {error}"
    return {"status": status, "finished_at": utcnow(), "error": error}, message


def finish_run(
    session: Session,
    publisher: EventPublisher,
    run_id: int,
    status: RunStatus,
    error: str | None = None,
) -> bool:
    """running -> succeeded | failed; False when the run had already left "running"."""
    values, message = _ending(session, run_id, status, error)
    event = _set_status(session, run_id, (RunStatus.running,), values, message)
    if event is None:
        return False
    _commit(session, publisher, event)
    return True


def reap_lost_runs(session: Session, publisher: EventPublisher, lost_after_s: float) -> list[int]:
    """Ends running runs whose worker stopped sending heartbeats: failed, with their rounds and
    checkpoints kept, or succeeded if their final round and checkpoint were committed."""
    cutoff = utcnow() - timedelta(seconds=lost_after_s)
    stale = session.exec(
        select(Run.id).where(Run.status == RunStatus.running, col(Run.heartbeat_at) < cutoff)
    ).all()
    reaped = []
    for run_id in stale:
        assert run_id is not None
        error = LOST_RUN_ERROR.format(seconds=lost_after_s)
        values, message = _ending(session, run_id, RunStatus.failed, error)
        event = _set_status(
            session,
            run_id,
            (RunStatus.running,),
            values,
            message,
            extra_where=(col(Run.heartbeat_at) < cutoff,),
        )
        if event is not None:
            _commit(session, publisher, event)
            reaped.append(run_id)
    return reaped


@asynccontextmanager
async def reaper(engine: Engine, settings: Settings) -> AsyncIterator[None]:
    """While the web app runs: fail lost runs even when no worker is alive to do it."""

    def reap() -> list[int]:
        with Session(engine) as session:
            return reap_lost_runs(session, publisher_for(settings.redis_url), settings.lost_after_s)

    async def loop() -> None:
        while True:
            try:
                await to_thread.run_sync(reap)
            except Exception:  # the database may be briefly away; try again next time
                log.exception("reaping lost runs failed")
            await asyncio.sleep(min(settings.lost_after_s / 4, 15.0))

    task = asyncio.create_task(loop(), name="fedvla-reaper")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

"""The GPU workers as they registered themselves, and whether they are still alive."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from fedvla.core.models import ApiToken, Run, WorkerNode, as_utc, utcnow
from fedvla.core.services import experiments


@dataclass(frozen=True)
class WorkerState:
    worker: WorkerNode
    online: bool
    current_run_id: int | None
    """The run it works on, when the reader may read that run (None otherwise, or idle)."""


def register(
    session: Session, *, name: str, host: str, queue: str, gpus: list[dict[str, Any]]
) -> WorkerNode:
    """Creates or refreshes the worker's row (a restarted worker keeps its name and row)."""
    node = session.exec(select(WorkerNode).where(WorkerNode.name == name)).first()
    now = utcnow()
    if node is None:
        node = WorkerNode(name=name, host=host, queue=queue, gpus=gpus)
    node.host, node.queue, node.gpus = host, queue, gpus
    node.started_at = node.heartbeat_at = now
    node.current_run_id = None
    session.add(node)
    session.commit()
    session.refresh(node)
    return node


def heartbeat(session: Session, name: str) -> None:
    session.execute(
        update(WorkerNode).where(col(WorkerNode.name) == name).values(heartbeat_at=utcnow())
    )
    session.commit()


def set_current_run(session: Session, name: str, run_id: int | None) -> None:
    session.execute(
        update(WorkerNode)
        .where(col(WorkerNode.name) == name)
        .values(current_run_id=run_id, heartbeat_at=utcnow())
    )
    session.commit()


def list_workers(
    session: Session, *, token: ApiToken, offline_after_s: float
) -> Sequence[WorkerState]:
    """Every registered worker, newest heartbeat first; silent for ``offline_after_s``: offline.
    A current run that ``token`` may not read (fedvla.core.services.experiments.can_read) is not
    named."""
    cutoff = utcnow() - timedelta(seconds=offline_after_s)
    nodes = session.exec(select(WorkerNode).order_by(col(WorkerNode.heartbeat_at).desc())).all()
    return [
        WorkerState(
            node,
            as_utc(node.heartbeat_at) >= cutoff,
            node.current_run_id if _may_read_run(session, token, node.current_run_id) else None,
        )
        for node in nodes
    ]


def _may_read_run(session: Session, token: ApiToken, run_id: int | None) -> bool:
    run = session.get(Run, run_id) if run_id is not None else None
    return run is not None and experiments.can_read(
        session=session, token=token, experiment_id=run.experiment_id
    )

"""The runs list as MLflow and W&B users expect it: search, filters, sorting and pagination, with
each run's duration and final loss computed by the database (so sorting and paging agree).

The final loss is the last trained round's server eval loss, or that round's mean client train
loss where the server did not evaluate; ``final_loss_source`` says which. Round 0 (the evaluation
before training) is no trained round.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, literal, or_
from sqlmodel import Session, col, select

from fedvla.core.errors import FieldProblem, InvalidFields, reject_nul_characters
from fedvla.core.models import (
    ApiToken,
    Experiment,
    ExperimentSite,
    Role,
    RoundMetric,
    Run,
    RunStatus,
)

FINAL_LOSS_MEANING = (
    "Server eval loss of the last trained round; its mean client train loss where the server "
    "did not evaluate (marked “train”)."
)


class RunSort(StrEnum):
    experiment = "experiment"
    status = "status"
    created = "created"
    duration = "duration"
    final_loss = "final_loss"


class SortOrder(StrEnum):
    asc = "asc"
    desc = "desc"


@dataclass(frozen=True)
class RunQuery:
    """What the runs list asks for; every filter is optional."""

    text: str = ""
    experiment_id: int | None = None
    status: RunStatus | None = None
    created_from: date | None = None
    created_to: date | None = None
    sort: RunSort = RunSort.created
    order: SortOrder = SortOrder.desc
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class RunSummary:
    run: Run
    experiment_name: str
    duration_s: float | None
    final_loss: float | None
    final_loss_source: str | None  # "eval" | "train" | None


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _duration_s(dialect: str, now: datetime) -> Any:
    """Seconds from start to finish, or to ``now`` while the run goes on; None before it starts."""
    if dialect == "sqlite":  # naive UTC text; julianday counts days
        end = func.coalesce(col(Run.finished_at), literal(now.replace(tzinfo=None).isoformat(" ")))
        return (func.julianday(end) - func.julianday(col(Run.started_at))) * 86400.0
    end = func.coalesce(col(Run.finished_at), literal(now))
    return cast(func.extract("epoch", end - col(Run.started_at)), Float)


def _last_round_value(column: Any) -> Any:
    return (
        select(column)
        .where(RoundMetric.run_id == Run.id, RoundMetric.round > 0)
        .order_by(col(RoundMetric.round).desc())
        .limit(1)
        .correlate(Run)
        .scalar_subquery()
    )


def _text_filter(text: str) -> Any:
    """Experiment name or notes containing ``text``, or the run id it names (``12``, ``run 12``)."""
    pattern = _like(text)
    matches: list[Any] = [
        col(Experiment.name).ilike(pattern, escape="\\"),
        col(Run.notes).ilike(pattern, escape="\\"),
    ]
    digits = text.lower().removeprefix("run").strip().lstrip("#")
    if digits.isdigit() and int(digits) < 2**31:
        matches.append(col(Run.id) == int(digits))
    return or_(*matches)


def check_query(query: RunQuery) -> None:
    """InvalidFields naming the query parameter at fault."""
    try:
        reject_nul_characters({"q": query.text})
    except InvalidFields as error:
        raise InvalidFields(
            [FieldProblem(field=p.field, reason=p.reason, location="query") for p in error.errors]
        ) from None
    if query.created_from and query.created_to and query.created_from > query.created_to:
        raise InvalidFields(
            [FieldProblem(field="created_to", reason="is before created_from", location="query")]
        )


def search_runs(
    session: Session, token: ApiToken, query: RunQuery, now: datetime | None = None
) -> tuple[list[RunSummary], int]:
    """A page of the runs ``token`` may read that match ``query``, and how many match in all."""
    check_query(query)
    bind = session.get_bind()
    duration = _duration_s(bind.dialect.name, now or datetime.now(UTC)).label("duration_s")
    final_eval = _last_round_value(RoundMetric.eval_loss)
    final_train = _last_round_value(RoundMetric.train_loss)
    final_loss = func.coalesce(final_eval, final_train)
    conditions: list[Any] = []
    if query.text.strip():
        conditions.append(_text_filter(query.text.strip()))
    if query.experiment_id is not None:
        conditions.append(Run.experiment_id == query.experiment_id)
    if query.status is not None:
        conditions.append(Run.status == query.status)
    if query.created_from is not None:
        start = datetime.combine(query.created_from, time(), UTC)
        conditions.append(col(Run.created_at) >= start)
    if query.created_to is not None:
        end = datetime.combine(query.created_to + timedelta(days=1), time(), UTC)
        conditions.append(col(Run.created_at) < end)
    if token.role == Role.operator:
        mine = select(ExperimentSite.experiment_id).where(ExperimentSite.site_id == token.site_id)
        conditions.append(col(Run.experiment_id).in_(mine))
    where = and_(True, *conditions)
    joined = select(Run.id).join(Experiment, col(Experiment.id) == Run.experiment_id).where(where)
    count = session.exec(select(func.count()).select_from(joined.subquery())).one()

    key = {
        RunSort.experiment: func.lower(col(Experiment.name)),
        RunSort.status: col(Run.status),
        RunSort.created: col(Run.created_at),
        RunSort.duration: duration,
        RunSort.final_loss: final_loss,
    }[query.sort]
    ordered = key.asc() if query.order == SortOrder.asc else key.desc()
    missing_last = case((key.is_(None), 1), else_=0)
    tie = col(Run.id).asc() if query.order == SortOrder.asc else col(Run.id).desc()
    rows = session.exec(
        select(Run, Experiment.name, duration, final_eval, final_train)  # type: ignore[call-overload]
        .join(Experiment, col(Experiment.id) == Run.experiment_id)
        .where(where)
        .order_by(missing_last, ordered, tie)
        .offset(query.offset)
        .limit(query.limit)
    ).all()
    summaries = [
        RunSummary(
            run=run,
            experiment_name=name,
            duration_s=None if seconds is None else max(0.0, float(seconds)),
            final_loss=eval_loss if eval_loss is not None else train_loss,
            final_loss_source=(
                "eval" if eval_loss is not None else "train" if train_loss is not None else None
            ),
        )
        for run, name, seconds, eval_loss, train_loss in rows
    ]
    return summaries, count

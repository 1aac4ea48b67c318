"""Run pages: list, the live run page (charts over SSE), cancel, resume, and run comparison."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from sqlmodel import Session
from starlette.responses import RedirectResponse, Response

from fedvla.core.experiment_config import Evaluation, evaluation_of_frozen
from fedvla.core.models import ClientMetric, RoundMetric, Run, RunEvent, RunStatus, as_utc
from fedvla.core.services import checkpoints as checkpoint_service
from fedvla.core.services import experiments as experiment_service
from fedvla.core.services import runs as service
from fedvla.core.services.events import publisher_for
from fedvla.orchestration.dispatch import run_sender
from fedvla.web.api.deps import SessionDep, SettingsDep
from fedvla.web.pages import session as web_session
from fedvla.web.pages.contexts import ComparePage, Progress, RunPage, RunsPage
from fedvla.web.pages.deps import WebAdmin, WebToken
from fedvla.web.pages.errors import HtmlRoute
from fedvla.web.pages.templating import render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

LOG_TAIL = 200
EVENT_PAGE = 1000


def progress_of(run: Run, rounds: Sequence[RoundMetric]) -> Progress:
    """Round i of N, time since the start, and the time to go at the mean round duration so far."""
    first = run.resumed_from_round or 0
    planned = int(run.config.get("num_rounds", 0))
    done = max([run.current_round, *(r.round for r in rounds)])
    started = as_utc(run.started_at) if run.started_at else None
    finished = as_utc(run.finished_at) if run.finished_at else None
    elapsed = None
    if started is not None:
        elapsed = ((finished or datetime.now(UTC)) - started).total_seconds()
    trained = [r.duration_s for r in rounds if r.round > first and r.duration_s > 0]
    eta = None
    if run.status == RunStatus.running and trained:
        eta = sum(trained) / len(trained) * max(0, planned - done)
    return Progress(round=done, num_rounds=planned, first_round=first, elapsed_s=elapsed, eta_s=eta)


def loss_series(evaluation: Evaluation | None) -> list[dict[str, str]]:
    """The loss chart's lines: the evaluations the run makes (none when evaluation is off,
    rather than an empty line) and the clients' train loss."""
    lines = []
    if evaluation is None or evaluation.server:
        lines.append({"key": "eval_loss", "label": "server eval loss"})
    if evaluation is None or evaluation.federated:
        lines.append({"key": "fed_eval_loss", "label": "federated eval loss"})
    return [*lines, {"key": "train_loss", "label": "mean client train loss"}]


def chart_data(
    rounds: Sequence[RoundMetric],
    clients: Sequence[ClientMetric],
    evaluation: Evaluation | None = None,
) -> dict[str, Any]:
    """What fedvla/web/static/js/dashboard.js draws; live round events (same RoundReport fields)
    extend it. Round 0, the evaluation before training, is no round: the rounds table shows it, the
    charts do not."""
    return {
        "rounds": [
            {
                "round": r.round,
                "eval_loss": r.eval_loss,
                "fed_eval_loss": r.fed_eval_loss,
                "train_loss": r.train_loss,
                "duration_s": r.duration_s,
                "bytes_sent": r.bytes_sent,
                "bytes_received": r.bytes_received,
            }
            for r in rounds
            if r.round > 0
        ],
        "clients": [
            {"round": c.round, "client": c.client, "train_loss": c.train_loss, "ok": c.ok}
            for c in clients
        ],
        "loss_series": loss_series(evaluation),
    }


def _log_tail(session: Session, run_id: int) -> tuple[list[RunEvent], int]:
    """The newest LOG_TAIL events and the id of the newest event."""
    tail: list[RunEvent] = []
    after = 0
    while True:
        events, _ = service.run_events(session, run_id, after, EVENT_PAGE)
        tail = [*tail, *events][-LOG_TAIL:]
        if len(events) < EVENT_PAGE:
            break
        after = events[-1].id or after
    last = tail[-1].id if tail and tail[-1].id is not None else 0
    return tail, last


def _experiment_names(session: Session, token: WebToken) -> dict[int, str]:
    experiments, _ = experiment_service.list_experiments(session=session, token=token, limit=1000)
    return {e.id: e.name for e in experiments if e.id is not None}


@router.get("/runs", name="web_runs")
def list_runs(
    request: Request,
    session: SessionDep,
    token: WebToken,
    status: Annotated[RunStatus | None, Query()] = None,
) -> Response:
    runs, count = service.list_runs(session, token, status=status, limit=200)
    page = RunsPage(
        runs=list(runs),
        count=count,
        experiment_names=_experiment_names(session, token),
        status=status.value if status else "",
    )
    alternate = "/api/v1/runs" + (f"?status={status.value}" if status else "")
    return render(
        request, "runs.html", page, token=token, fragment="_runs_table.html",
        alternate=alternate, nav="runs",
    )  # fmt: skip


@router.get("/runs/compare", name="web_compare")
def compare_runs(
    request: Request,
    session: SessionDep,
    token: WebToken,
    run: Annotated[list[int], Query()] = [],  # noqa: B006 - FastAPI copies defaults
) -> Response:
    chosen = [service.get_run(session, run_id, token) for run_id in dict.fromkeys(run)]
    names = _experiment_names(session, token)
    series = []
    evaluations = [evaluation_of_frozen(item.config) for item in chosen]
    for item in chosen:
        assert item.id is not None
        rounds = service.round_metrics(session, item.id)
        series.append(
            {
                "label": f"run {item.id} · {names.get(item.experiment_id, '?')}",
                "run_id": item.id,
                "rounds": chart_data(rounds, [])["rounds"],
            }
        )
    candidates, _ = service.list_runs(session, token, limit=200)
    page = ComparePage(
        runs=chosen,
        candidates=list(candidates),
        series=series,
        experiment_names=names,
        evaluations=evaluations,
    )
    return render(request, "compare.html", page, token=token, nav="runs")


def run_page(session: Session, run: Run, token: WebToken) -> RunPage:
    assert run.id is not None
    rounds = service.round_metrics(session, run.id)
    clients = service.client_metrics(session, run.id)
    log, last_event_id = _log_tail(session, run.id)
    experiment = experiment_service.get_experiment(session=session, experiment_id=run.experiment_id)
    evaluation = evaluation_of_frozen(run.config)
    return RunPage(
        run=run,
        experiment_name=experiment.name,
        progress=progress_of(run, rounds),
        rounds=list(rounds),
        clients=list(clients),
        checkpoints=list(checkpoint_service.list_checkpoints(session, run.id)),
        last_round=experiment.config.num_rounds,
        log=log,
        last_event_id=last_event_id,
        chart_data=chart_data(rounds, clients, evaluation),
        events_url=f"/api/v1/runs/{run.id}/events?after_id={last_event_id}",
        evaluation=evaluation,
    )


@router.get("/runs/{run_id}", name="web_run")
def show_run(request: Request, run_id: int, session: SessionDep, token: WebToken) -> Response:
    run = service.get_run(session, run_id, token)
    return render(
        request, "run.html", run_page(session, run, token), token=token,
        fragment="_run_live.html", alternate=f"/api/v1/runs/{run_id}", nav="runs",
    )  # fmt: skip


@router.post("/runs/{run_id}/cancel", name="web_run_cancel")
def cancel_run(
    request: Request, run_id: int, session: SessionDep, settings: SettingsDep, token: WebAdmin
) -> Response:
    service.cancel_run(session, publisher_for(settings.redis_url), run_id, actor=token.name)
    web_session.flash(request, f"Run {run_id} cancelled.")
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/resume", name="web_run_resume")
def resume_run(
    request: Request,
    run_id: int,
    session: SessionDep,
    settings: SettingsDep,
    token: WebAdmin,
    round: Annotated[int, Form(ge=0)],
) -> Response:
    """A new run of the same experiment, starting from this run's checkpoint of ``round``."""
    source = service.get_run(session, run_id, token)
    run = service.launch_run(
        session,
        run_sender(settings),
        publisher_for(settings.redis_url),
        experiment_id=source.experiment_id,
        resume=service.ResumeFrom(run_id, round),
        actor=token.name,
    )
    web_session.flash(request, f"Run {run.id} queued, resuming run {run_id} from round {round}.")
    return RedirectResponse(f"/runs/{run.id}", status_code=303)

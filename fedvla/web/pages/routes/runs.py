"""Run pages: list, the live run page (charts over SSE), cancel, resume, and run comparison."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from sqlmodel import Session
from starlette.responses import RedirectResponse, Response

from fedvla.core.experiment_config import Evaluation, evaluation_of_frozen
from fedvla.core.models import (
    MAX_RUN_NOTES_LENGTH,
    ClientMetric,
    RoundMetric,
    Run,
    RunEvent,
    RunStatus,
    as_utc,
)
from fedvla.core.schemas.common import utc_json
from fedvla.core.services import checkpoints as checkpoint_service
from fedvla.core.services import experiments as experiment_service
from fedvla.core.services import run_compare, run_notes, run_search
from fedvla.core.services import runs as service
from fedvla.core.services.events import events_of_kind, publisher_for
from fedvla.core.services.redaction import for_reader
from fedvla.core.services.run_search import RunQuery
from fedvla.orchestration.dispatch import run_sender
from fedvla.web.api.deps import SessionDep, SettingsDep
from fedvla.web.api.params import run_query_params
from fedvla.web.pages import session as web_session
from fedvla.web.pages.contexts import ComparePage, NotesSection, Progress, RunPage, RunsPage
from fedvla.web.pages.deps import WebAdmin, WebToken
from fedvla.web.pages.errors import HtmlRoute
from fedvla.web.pages.templating import is_fragment_request, render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

LOG_TAIL = 200
RESOURCE_POINTS = 2000
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
    waiting = None
    if started is None and run.status == RunStatus.queued:
        waiting = (datetime.now(UTC) - as_utc(run.created_at)).total_seconds()
    return Progress(
        round=done,
        num_rounds=planned,
        first_round=first,
        elapsed_s=elapsed,
        eta_s=eta,
        waiting_s=waiting,
        live=run.status in (RunStatus.queued, RunStatus.running),
    )


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
    resources: Sequence[RunEvent] = (),
    evaluation: Evaluation | None = None,
) -> dict[str, Any]:
    """What fedvla/web/static/js/dashboard.js draws; live round and resources events (the same
    fields) extend it. Round 0, the evaluation before training, is no round: the rounds table shows
    it, the charts do not.

    The charts offer every numeric field they find: a round's ``*loss*`` and ``*mse*`` fields on
    the loss chart, ``bytes_*`` on the bytes chart, ``*_s`` on the duration chart; a sample's
    ``*_bytes`` on the memory chart and ``*_percent`` on the utilisation chart. An optional
    ``"labels": {field: text}`` names fields the script does not know. ``loss_series`` names
    the loss lines the run has (none for an evaluation it does not make)."""
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
        "resources": [resource_point(event) for event in resources],
        "loss_series": loss_series(evaluation),
        "labels": {line["key"]: line["label"] for line in loss_series(evaluation)},
    }


def resource_point(event: RunEvent) -> dict[str, Any]:
    """A ``resources`` event as the resource chart's point; live events carry the same."""
    return {"created_at": utc_json(event.created_at), **event.data}


def _log_tail(session: Session, run_id: int) -> tuple[list[RunEvent], int]:
    """The newest LOG_TAIL events and the id of the newest event."""
    tail: list[RunEvent] = []
    after = 0
    while True:
        events, _ = service.run_events(session, run_id, after, EVENT_PAGE)
        shown = [e for e in events if e.kind != "resources"]  # the resource chart shows those
        tail = [*tail, *shown][-LOG_TAIL:]
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
    query: Annotated[RunQuery, Depends(run_query_params)],
) -> Response:
    """Search, filter, sort and page the runs; the REST API's GET /runs with the same query."""
    rows, count = run_search.search_runs(session, token, query)
    experiments, _ = experiment_service.list_experiments(session=session, token=token, limit=1000)
    page = RunsPage(
        rows=rows,
        count=count,
        query=query,
        experiments=sorted(
            ((e.id, e.name) for e in experiments if e.id is not None), key=lambda e: e[1].lower()
        ),
        final_loss_meaning=run_search.FINAL_LOSS_MEANING,
    )
    link = page.link()
    response = render(
        request, "runs.html", page, token=token, fragment="_runs_table.html",
        alternate="/api/v1" + link, nav="runs",
    )  # fmt: skip
    if is_fragment_request(request):
        response.headers["HX-Push-Url"] = link  # the clean URL, without the form's empty fields
    return response


@router.get("/runs/compare", name="web_compare")
def compare_runs(
    request: Request,
    session: SessionDep,
    token: WebToken,
    run: Annotated[list[int], Query()] = [],  # noqa: B006 - FastAPI copies defaults
    only_differences: Annotated[bool, Query()] = False,
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
    configs = [
        {"experiment": names.get(item.experiment_id, "?"), **for_reader(token, item.config)}
        for item in chosen
    ]
    settings = run_compare.settings_diff(configs)
    differing = [row for row in settings if row.differs]
    candidates, _ = service.list_runs(session, token, limit=200)
    page = ComparePage(
        runs=chosen,
        candidates=list(candidates),
        series=series,
        experiment_names=names,
        settings=differing if only_differences else settings,
        settings_count=len(settings),
        differing_count=len(differing),
        only_differences=only_differences,
        evaluations=evaluations,
        any_server_eval=any(e is not None and e.server for e in evaluations),
        any_federated_eval=any(e is not None and e.federated for e in evaluations),
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
        chart_data=chart_data(
            rounds,
            clients,
            events_of_kind(session, run.id, "resources", RESOURCE_POINTS),
            evaluation,
        ),
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


@router.post("/runs/{run_id}/notes", name="web_run_notes")
def save_notes(
    request: Request,
    run_id: int,
    session: SessionDep,
    token: WebToken,
    notes: Annotated[str, Form(max_length=MAX_RUN_NOTES_LENGTH)] = "",
) -> Response:
    """Operators and admins replace the run's notes; htmx gets the notes section back."""
    run = run_notes.set_notes(session, run_id, notes, token)
    if is_fragment_request(request):
        return render(request, "_run_notes.html", NotesSection(run=run), token=token)
    web_session.flash(request, f"Notes on run {run_id} saved.")
    return RedirectResponse(f"/runs/{run_id}#run-notes", status_code=303)


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

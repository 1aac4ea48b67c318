"""/runs: launch (admins), follow, cancel (admins); metrics and events of a run."""

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.engine import Engine
from sqlmodel import Session
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from fedvla.core.errors import DomainError
from fedvla.core.models import ApiToken
from fedvla.core.schemas.common import MAX_ID
from fedvla.core.schemas.runs import (
    ClientMetricPublic,
    ClientMetricsPublic,
    ResourceSamplePublic,
    ResourceSamplesPublic,
    RoundMetricPublic,
    RoundMetricsPublic,
    RunEventPublic,
    RunEventsPublic,
    RunLaunch,
    RunLaunchFromExperiment,
    RunListItem,
    RunPublic,
    RunsPublic,
    RunUpdate,
)
from fedvla.core.services import run_export, run_log, run_notes, run_search
from fedvla.core.services import runs as service
from fedvla.core.services.event_feed import EventHub, while_permitted
from fedvla.core.services.events import event_json, events_of_kind, publisher_for
from fedvla.core.services.redaction import for_reader, model_for_reader
from fedvla.core.services.run_search import RunQuery
from fedvla.orchestration.dispatch import run_sender
from fedvla.web.api.deps import (
    AdminToken,
    BearerCredentials,
    EngineDep,
    ReaderToken,
    SessionDep,
    SettingsDep,
    authenticate_request,
    in_threadpool,
)
from fedvla.web.api.errors import error_responses
from fedvla.web.api.params import IdPath, run_query_params

router = APIRouter(tags=["runs"])

FORBIDDEN = error_responses(403)

LAUNCH_RESPONSES = error_responses(
    403,
    404,
    409,
    503,
    _404="Unknown experiment",
    _409="Sites not approved, datasets that do not match",
    _503="The broker is down; no run was created",
)


def _launch(
    session: SessionDep,
    settings: SettingsDep,
    token: AdminToken,
    experiment_id: int,
    body: RunLaunchFromExperiment,
) -> RunPublic:
    resume = body.resume_from
    run = service.launch_run(
        session,
        run_sender(settings),
        publisher_for(settings.redis_url),
        experiment_id=experiment_id,
        resume=service.ResumeFrom(resume.run_id, resume.round) if resume else None,
        actor=token.name,
    )
    return RunPublic.model_validate(run)


@router.post(
    "/runs",
    response_model=RunPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses=LAUNCH_RESPONSES,
)
def launch_run(
    body: RunLaunch, session: SessionDep, settings: SettingsDep, token: AdminToken
) -> RunPublic:
    """Freeze the experiment into a run and queue it for a GPU worker (admins)."""
    return _launch(session, settings, token, body.experiment_id, body)


@router.post(
    "/experiments/{experiment_id}/runs",
    response_model=RunPublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses=LAUNCH_RESPONSES,
)
def launch_experiment_run(
    experiment_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    token: AdminToken,
    body: RunLaunchFromExperiment | None = None,
) -> RunPublic:
    """Launch a run of this experiment (admins); the body may name a checkpoint to resume from."""
    return _launch(session, settings, token, experiment_id, body or RunLaunchFromExperiment())


@router.get("/runs", response_model=RunsPublic)
@in_threadpool
def list_runs(
    session: SessionDep,
    token: ReaderToken,
    query: Annotated[RunQuery, Depends(run_query_params)],
) -> RunsPublic:
    """Search, filter, sort and page the runs (newest first by default). Operators see only runs
    of experiments their site takes part in. 422 names the parameter at fault."""
    rows, count = run_search.search_runs(session, token, query)
    data = [_for_reader(token, _list_item(row)) for row in rows]
    return RunsPublic(data=data, count=count)


def _for_reader[R: RunPublic](token: ApiToken, run: R) -> R:
    """Server paths hidden from non-admins, except in the notes: people wrote those for readers."""
    return model_for_reader(token, run).model_copy(update={"notes": run.notes})


def _list_item(row: run_search.RunSummary) -> RunListItem:
    return RunListItem.model_validate(
        {
            **RunPublic.model_validate(row.run).model_dump(),
            "experiment_name": row.experiment_name,
            "duration_s": row.duration_s,
            "final_loss": row.final_loss,
            "final_loss_source": row.final_loss_source,
        }
    )


@router.get("/runs/{run_id}", response_model=RunPublic, responses=FORBIDDEN)
@in_threadpool
def get_run(run_id: IdPath, session: SessionDep, token: ReaderToken) -> RunPublic:
    return _for_reader(token, RunPublic.model_validate(service.get_run(session, run_id, token)))


@router.patch(
    "/runs/{run_id}",
    response_model=RunPublic,
    responses=error_responses(403, 404, _403="Viewers; operators whose site is not in the run"),
)
def update_run(
    run_id: IdPath, body: RunUpdate, session: SessionDep, token: ReaderToken
) -> RunPublic:
    """Replace the run's notes (operators and admins; operators on runs they may read)."""
    run = run_notes.set_notes(session, run_id, body.notes, token)
    return _for_reader(token, RunPublic.model_validate(run))


@router.post("/runs/{run_id}/cancel", response_model=RunPublic, responses=FORBIDDEN)
def cancel_run(
    run_id: IdPath, session: SessionDep, settings: SettingsDep, token: AdminToken
) -> RunPublic:
    """Cancel a queued or running run (admins); its worker stops the federation within seconds.
    Checkpoints already written stay. 409 if the run already finished."""
    run = service.cancel_run(session, publisher_for(settings.redis_url), run_id, actor=token.name)
    return RunPublic.model_validate(run)


@router.get("/runs/{run_id}/rounds", response_model=RoundMetricsPublic, responses=FORBIDDEN)
@in_threadpool
def list_rounds(run_id: IdPath, session: SessionDep, token: ReaderToken) -> RoundMetricsPublic:
    service.get_run(session, run_id, token)
    rows = service.round_metrics(session, run_id)
    return RoundMetricsPublic(
        data=[RoundMetricPublic.model_validate(row) for row in rows], count=len(rows)
    )


@router.get("/runs/{run_id}/resources", response_model=ResourceSamplesPublic, responses=FORBIDDEN)
@in_threadpool
def list_resources(
    run_id: IdPath,
    session: SessionDep,
    settings: SettingsDep,
    token: ReaderToken,
    limit: Annotated[int, Query(ge=1, le=10_000, description="The newest this many.")] = 2000,
) -> ResourceSamplesPublic:
    """Memory, CPU and (where nvidia-smi answers) GPU use of the run's federation, sampled by its
    worker every ``FEDVLA_RESOURCE_SAMPLE_INTERVAL_S``; oldest first. Live, the same samples come
    as ``resources`` events on ``/runs/{id}/events``."""
    service.get_run(session, run_id, token)
    events = events_of_kind(session, run_id, "resources", limit)
    data = [ResourceSamplePublic.model_validate({"at": e.created_at, **e.data}) for e in events]
    return ResourceSamplesPublic(
        data=data, count=len(data), interval_s=settings.resource_sample_interval_s
    )


@router.get("/runs/{run_id}/clients", response_model=ClientMetricsPublic, responses=FORBIDDEN)
@in_threadpool
def list_client_metrics(
    run_id: IdPath,
    session: SessionDep,
    token: ReaderToken,
    round: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only this round.")] = None,
) -> ClientMetricsPublic:
    """Per client (site or simulated partition) and round: loss, samples, seconds, bytes."""
    service.get_run(session, run_id, token)
    rows = service.client_metrics(session, run_id, round)
    return ClientMetricsPublic(
        data=[model_for_reader(token, ClientMetricPublic.model_validate(row)) for row in rows],
        count=len(rows),
    )


EXPORT_MEDIA = {
    run_export.ExportFormat.csv: "text/csv",
    run_export.ExportFormat.json: "application/json",
}


@router.get(
    "/runs/{run_id}/export/{table}.{fmt}",
    response_class=Response,
    responses={
        200: {
            "description": "An attachment: one row per round (rounds) or per client and round "
            "(clients), with the columns of /rounds and /clients.",
            "content": {"text/csv": {"schema": {"type": "string"}}, "application/json": {}},
        },
        **FORBIDDEN,
    },
)
@in_threadpool
def export_metrics(
    run_id: IdPath,
    table: run_export.ExportTable,
    fmt: run_export.ExportFormat,
    session: SessionDep,
    token: ReaderToken,
) -> Response:
    """The run's rounds or its clients' per-round metrics as a CSV or JSON file, e.g.
    ``/runs/4/export/rounds.csv``; whoever may read the run may export it."""
    rows = run_export.export_rows(session, run_id, table, token)
    if fmt == run_export.ExportFormat.csv:
        body = run_export.to_csv(rows, run_export.COLUMNS[table])
    else:
        body = json.dumps(rows, indent=1)
    name = run_export.filename(run_id, table, fmt)
    return Response(
        body,
        media_type=EXPORT_MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/runs/{run_id}/log",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The run's federation.log (server paths hidden from non-admins)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(403, 404, _404="Unknown run, or no worker has started it yet"),
    },
)
def download_log(
    run_id: IdPath, session: SessionDep, settings: SettingsDep, token: ReaderToken
) -> StreamingResponse:
    """The federation process's output as plain text, an attachment named
    ``run-<id>-federation.log``; whoever may read the run may read its log."""
    path = run_log.log_file(session, settings, run_id, token)
    return StreamingResponse(
        run_log.log_lines(path, token),
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{run_log.filename(run_id)}"'},
    )


@router.get("/runs/{run_id}/events.json", response_model=RunEventsPublic, responses=FORBIDDEN)
@in_threadpool
def list_events(
    run_id: IdPath,
    session: SessionDep,
    token: ReaderToken,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="Events with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> RunEventsPublic:
    """The run's events as JSON pages, oldest first; page on with ``after_id=next_after_id``."""
    service.get_run(session, run_id, token)
    events, finished = service.run_events(session, run_id, after_id, limit)
    next_after_id = events[-1].id if events and events[-1].id is not None else after_id
    return RunEventsPublic(
        data=[model_for_reader(token, RunEventPublic.model_validate(event)) for event in events],
        next_after_id=next_after_id,
        finished=finished,
    )


@router.get(
    "/runs/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"},
        **FORBIDDEN,
    },
)
async def stream_events(
    run_id: IdPath,
    request: Request,
    engine: EngineDep,
    credentials: BearerCredentials,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="Start after this event id.")] = 0,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_ID)] = None,
) -> EventSourceResponse:
    """The run's events live, as server-sent events (``event:`` is the kind, ``id:`` the event id).

    Reconnect with ``Last-Event-ID`` (browsers do) to receive exactly the events missed. The
    stream ends with an ``end`` event once the run is final and every event was sent. It closes
    without one, within a few seconds, once its token is revoked or its dashboard session ends.
    """
    token = await run_in_threadpool(_check_stream_access, engine, request, credentials, run_id)
    start = last_event_id if last_event_id is not None else after_id
    hub: EventHub = request.app.state.event_hub

    async def still_permitted() -> bool:
        try:
            await run_in_threadpool(_check_stream_access, engine, request, credentials, run_id)
        except DomainError:
            return False
        return True

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event in while_permitted(hub.follow(run_id, start), still_permitted):
            yield ServerSentEvent(
                id=str(event.id),
                event=event.kind,
                data=json.dumps(for_reader(token, event_json(event))),
            )
        if await still_permitted():
            yield ServerSentEvent(event="end", data=json.dumps({"run_id": run_id}))

    return EventSourceResponse(stream(), ping=15)


def _check_stream_access(
    engine: Engine, request: Request, credentials: HTTPAuthorizationCredentials | None, run_id: int
) -> ApiToken:
    """The caller's token, which may read the run: 401, 403 or 404 otherwise.

    In one session of its own, in one trip to the threadpool: a request session would hold its
    pooled connection between the token lookup and the route's own trip there, and when
    hundreds of streams connect at once every worker thread then waits for a connection that
    a request waiting for a thread holds.
    """
    with Session(engine, expire_on_commit=False) as session:
        token = authenticate_request(request, session, credentials)
        service.get_run(session, run_id, token)
        return token

"""The workers page: GPU workers, their heartbeats and current run, and the queue."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from fedvla.core.models import RunStatus
from fedvla.core.services import experiments as experiment_service
from fedvla.core.services import runs as run_service
from fedvla.core.services import workers as service
from fedvla.web.api.deps import SessionDep, SettingsDep
from fedvla.web.pages.contexts import WorkersPage
from fedvla.web.pages.deps import WebToken
from fedvla.web.pages.errors import HtmlRoute
from fedvla.web.pages.templating import render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)


@router.get("/workers", name="web_workers")
def list_workers(
    request: Request, session: SessionDep, settings: SettingsDep, token: WebToken
) -> Response:
    queued, _ = run_service.list_runs(session, token, status=RunStatus.queued, limit=200)
    running, _ = run_service.list_runs(session, token, status=RunStatus.running, limit=200)
    experiments, _ = experiment_service.list_experiments(session=session, token=token, limit=1000)
    page = WorkersPage(
        workers=list(
            service.list_workers(session, token=token, offline_after_s=settings.lost_after_s)
        ),
        queued=sorted(queued, key=lambda run: run.id or 0),
        running=list(running),
        experiment_names={e.id: e.name for e in experiments if e.id is not None},
    )
    return render(
        request, "workers.html", page, token=token, fragment="_workers.html",
        alternate="/api/v1/workers", nav="workers",
    )  # fmt: skip

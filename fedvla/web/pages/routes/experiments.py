"""Experiment pages: list, create, edit, clone, detail with runs, and Launch."""

from fastapi import APIRouter, Request
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from fedvla.core.errors import FieldProblem
from fedvla.core.schemas.experiments import ExperimentCreate, ExperimentPublic, ExperimentUpdate
from fedvla.core.schemas.sites import SitePublic
from fedvla.core.services import experiments as service
from fedvla.core.services import runs as run_service
from fedvla.core.services import sites as site_service
from fedvla.core.services.events import publisher_for
from fedvla.orchestration.dispatch import run_sender
from fedvla.web.api.deps import SessionDep, SettingsDep
from fedvla.web.pages import experiment_inputs, forms
from fedvla.web.pages import session as web_session
from fedvla.web.pages.contexts import (
    ExperimentFormPage,
    ExperimentPage,
    ExperimentRow,
    ExperimentsPage,
)
from fedvla.web.pages.deps import WebAdmin, WebToken
from fedvla.web.pages.errors import HtmlRoute
from fedvla.web.pages.templating import render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)


def _api(experiment_id: int | None = None) -> str:
    return "/api/v1/experiments" + (f"/{experiment_id}" if experiment_id is not None else "")


def _all_sites(session: SessionDep, token: WebToken) -> list[SitePublic]:
    rows, _ = site_service.list_sites(session=session, token=token, limit=200)
    return [SitePublic.model_validate(row, from_attributes=True) for row in rows]


def _form_page(
    request: Request,
    session: SessionDep,
    token: WebToken,
    *,
    action: str,
    heading: str,
    values: dict[str, str],
    problems: list[FieldProblem] = (),  # type: ignore[assignment]
    cancel_url: str,
    status_code: int = 200,
) -> Response:
    state = forms.form_state(values, problems, forms.experiment_field)
    page = ExperimentFormPage(
        action=action,
        heading=heading,
        form=state,
        sites=_all_sites(session, token),
        choices=experiment_inputs.CHOICES,
        bounds=experiment_inputs.BOUNDS,
        cancel_url=cancel_url,
    )
    return render(
        request, "experiment_form.html", page, token=token, status_code=status_code,
        nav="experiments", form_error=forms.form_error(state, "experiment"),
    )  # fmt: skip


def _submitted(form: FormData) -> tuple[dict[str, str], list[str]]:
    values = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    site_ids = [v for v in form.getlist("site_ids") if isinstance(v, str) and v]
    values["site_ids"] = ",".join(site_ids)
    return values, site_ids


@router.get("/experiments", name="web_experiments")
def list_experiments(request: Request, session: SessionDep, token: WebToken) -> Response:
    experiments, count = service.list_experiments(session=session, token=token, limit=200)
    rows = []
    for experiment in experiments:
        public = service.to_public(session=session, experiment=experiment)
        latest, _ = run_service.list_runs(session, token, experiment_id=public.id, limit=1)
        rows.append(ExperimentRow(experiment=public, latest_run=latest[0] if latest else None))
    page = ExperimentsPage(rows=rows, count=count)
    return render(
        request, "experiments.html", page, token=token, fragment="_experiments_table.html",
        alternate=_api(), nav="experiments",
    )  # fmt: skip


@router.get("/experiments/new", name="web_experiment_new")
def new_experiment(request: Request, session: SessionDep, token: WebAdmin) -> Response:
    return _form_page(
        request, session, token, action="/experiments", heading="New experiment",
        values=experiment_inputs.defaults(), cancel_url="/experiments",
    )  # fmt: skip


@router.post("/experiments", name="web_experiment_create")
async def create_experiment(request: Request, session: SessionDep, token: WebAdmin) -> Response:
    values, site_ids = _submitted(await request.form())
    body = forms.experiment_request(values, site_ids)
    outcome = forms.attempt(
        lambda: service.create_experiment(
            session=session, data=ExperimentCreate.model_validate(body)
        )
    )
    if (experiment := outcome.saved) is not None:
        web_session.flash(request, f"Experiment {experiment.name!r} created.")
        return RedirectResponse(f"/experiments/{experiment.id}", status_code=303)
    return _form_page(
        request, session, token, action="/experiments", heading="New experiment",
        values=values, problems=outcome.problems, cancel_url="/experiments",
        status_code=outcome.status_code,
    )  # fmt: skip


@router.get("/experiments/{experiment_id}", name="web_experiment")
def show_experiment(
    request: Request, experiment_id: int, session: SessionDep, token: WebToken
) -> Response:
    experiment = service.get_readable_experiment(
        session=session, token=token, experiment_id=experiment_id
    )
    public = service.to_public(session=session, experiment=experiment)
    runs, _ = run_service.list_runs(session, token, experiment_id=experiment_id, limit=200)
    sites = [s for s in _all_sites(session, token) if s.id in public.site_ids]
    page = ExperimentPage(experiment=public, runs=list(runs), sites=sites)
    return render(
        request, "experiment.html", page, token=token, fragment="_experiment_runs.html",
        alternate=_api(experiment_id), nav="experiments",
    )  # fmt: skip


def _editable(session: SessionDep, experiment_id: int) -> ExperimentPublic:
    experiment = service.get_experiment(session=session, experiment_id=experiment_id)
    return service.to_public(session=session, experiment=experiment)


@router.get("/experiments/{experiment_id}/edit", name="web_experiment_edit")
def edit_experiment(
    request: Request, experiment_id: int, session: SessionDep, token: WebAdmin
) -> Response:
    public = _editable(session, experiment_id)
    return _form_page(
        request, session, token, action=f"/experiments/{experiment_id}/edit",
        heading=f"Edit {public.name}", values=forms.experiment_values(public),
        cancel_url=f"/experiments/{experiment_id}",
    )  # fmt: skip


@router.post("/experiments/{experiment_id}/edit", name="web_experiment_update")
async def update_experiment(
    request: Request, experiment_id: int, session: SessionDep, token: WebAdmin
) -> Response:
    experiment = service.get_experiment(session=session, experiment_id=experiment_id)
    values, site_ids = _submitted(await request.form())
    body = forms.experiment_request(values, site_ids)
    outcome = forms.attempt(
        lambda: service.update_experiment(
            session=session, experiment=experiment, data=ExperimentUpdate.model_validate(body)
        )
    )
    if outcome.saved is not None:
        web_session.flash(request, f"Experiment {outcome.saved.name!r} saved.")
        return RedirectResponse(f"/experiments/{experiment_id}", status_code=303)
    return _form_page(
        request, session, token, action=f"/experiments/{experiment_id}/edit",
        heading=f"Edit {experiment.name}", values=values, problems=outcome.problems,
        cancel_url=f"/experiments/{experiment_id}", status_code=outcome.status_code,
    )  # fmt: skip


@router.get("/experiments/{experiment_id}/clone", name="web_experiment_clone")
def clone_experiment(
    request: Request, experiment_id: int, session: SessionDep, token: WebAdmin
) -> Response:
    """The create form, filled in with this experiment's definition under a new name."""
    public = _editable(session, experiment_id)
    values = forms.experiment_values(public)
    values["name"] = f"{public.name}-copy"[:100]
    return _form_page(
        request, session, token, action="/experiments", heading=f"Clone {public.name}",
        values=values, cancel_url=f"/experiments/{experiment_id}",
    )  # fmt: skip


@router.post("/experiments/{experiment_id}/launch", name="web_experiment_launch")
def launch(
    request: Request,
    experiment_id: int,
    session: SessionDep,
    settings: SettingsDep,
    token: WebAdmin,
) -> Response:
    run = run_service.launch_run(
        session,
        run_sender(settings),
        publisher_for(settings.redis_url),
        experiment_id=experiment_id,
        actor=token.name,
    )
    web_session.flash(request, f"Run {run.id} launched.")
    return RedirectResponse(f"/runs/{run.id}", status_code=303)

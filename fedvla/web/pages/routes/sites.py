"""Site pages: list with the approval queue, registration and edit forms, site page, decisions."""

from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from fedvla.core.errors import Conflict, DomainError, FieldProblem
from fedvla.core.models import RobotType, Site, SiteStatus
from fedvla.core.schemas.sites import SiteCreate, SitePublic, SiteUpdate, StatusChange
from fedvla.core.services import compatibility, contributions
from fedvla.core.services import sites as service
from fedvla.sites import startup_kit, superlink_admin
from fedvla.web.api.deps import SessionDep, SettingsDep, ensure_site_access
from fedvla.web.pages import forms
from fedvla.web.pages import session as web_session
from fedvla.web.pages.contexts import SiteFormPage, SiteNodePage, SitePage, SitesPage
from fedvla.web.pages.deps import WebAdmin, WebSiteEditor, WebSiteRegistrar, WebToken
from fedvla.web.pages.errors import HtmlRoute
from fedvla.web.pages.routes.auth import safe_next
from fedvla.web.pages.templating import render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

ROBOT_TYPES = [r.value for r in RobotType]
NEW_SITE = {
    "robot_type": "so100", "state_dim": "6", "action_dim": "6", "fps": "30",
    "camera_keys": "observation.images.top",
}  # fmt: skip


def _public(site: object) -> SitePublic:
    return SitePublic.model_validate(site, from_attributes=True)


def _form_page(
    request: Request,
    token: WebToken,
    *,
    action: str,
    heading: str,
    values: dict[str, str],
    problems: list[FieldProblem] | None = None,
    cancel_url: str,
    status_code: int = 200,
) -> Response:
    state = forms.form_state(values, problems or [], forms.site_field)
    page = SiteFormPage(
        action=action, heading=heading, form=state, robot_types=ROBOT_TYPES, cancel_url=cancel_url
    )
    return render(
        request, "site_form.html", page, token=token, status_code=status_code, nav="sites",
        form_error=forms.form_error(state, "site"),
    )  # fmt: skip


def _submitted(form: object) -> dict[str, str]:
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}  # type: ignore[attr-defined]


@router.get("/sites", name="web_sites")
def list_sites(request: Request, session: SessionDep, token: WebToken) -> Response:
    rows, _ = service.list_sites(session=session, token=token, limit=200)
    sites = [_public(row) for row in rows]
    page = SitesPage(sites=sites, pending=[s for s in sites if s.status == SiteStatus.pending])
    return render(
        request, "sites.html", page, token=token, fragment="_sites_table.html",
        alternate="/api/v1/sites", nav="sites",
    )  # fmt: skip


@router.get("/sites/new", name="web_site_new")
def new_site(request: Request, token: WebSiteRegistrar) -> Response:
    return _form_page(
        request, token, action="/sites", heading="Register a site", values=dict(NEW_SITE),
        cancel_url="/sites",
    )  # fmt: skip


@router.post("/sites", name="web_site_create")
async def create_site(request: Request, session: SessionDep, token: WebSiteRegistrar) -> Response:
    values = _submitted(await request.form())
    body, problems = forms.site_request(values)
    outcome = forms.Outcome[Site](None, problems, 422)
    if not problems:
        outcome = forms.attempt(
            lambda: service.register_site(
                session=session, data=SiteCreate.model_validate(body), token=token
            )
        )
    if (site := outcome.saved) is not None:
        web_session.flash(request, f"Site {site.name!r} registered; it waits for approval.")
        return RedirectResponse(f"/sites/{site.id}", status_code=303)
    return _form_page(
        request, token, action="/sites", heading="Register a site", values=values,
        problems=outcome.problems, cancel_url="/sites", status_code=outcome.status_code,
    )  # fmt: skip


@router.get("/sites/{site_id}", name="web_site")
def show_site(
    request: Request, site_id: int, session: SessionDep, settings: SettingsDep, token: WebToken
) -> Response:
    site = service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    try:
        startup_kit.dialable_address(settings)
        kit_unavailable = None
    except Conflict as refused:
        kit_unavailable = refused.detail
    page = SitePage(
        site=_public(site),
        audit=service.audit_log(session=session, site_id=site_id),
        contributions=contributions.site_contributions(session, site_id),
        compatibility=compatibility.reports_for_site(session=session, site=site),
        kit_unavailable=kit_unavailable,
    )
    return render(
        request, "site.html", page, token=token, alternate=f"/api/v1/sites/{site_id}", nav="sites"
    )


@router.get("/sites/{site_id}/node", name="web_site_node")
def site_node(
    request: Request, site_id: int, session: SessionDep, settings: SettingsDep, token: WebToken
) -> Response:
    """The node status fragment, loaded after the site page (the SuperLink may be slow)."""
    site = service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    try:
        page = SiteNodePage(
            site_id=site_id, node=superlink_admin.site_node(settings, site), error=None
        )
    except DomainError as error:
        page = SiteNodePage(site_id=site_id, node=None, error=error.detail)
    return render(
        request, "_site_node.html", page, token=token, alternate=f"/api/v1/sites/{site_id}/node"
    )


@router.get("/sites/{site_id}/edit", name="web_site_edit")
def edit_site(
    request: Request, site_id: int, session: SessionDep, token: WebSiteEditor
) -> Response:
    site = service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    return _form_page(
        request, token, action=f"/sites/{site_id}/edit", heading=f"Edit {site.name}",
        values=forms.site_values(_public(site)), cancel_url=f"/sites/{site_id}",
    )  # fmt: skip


@router.post("/sites/{site_id}/edit", name="web_site_update")
async def update_site(
    request: Request, site_id: int, session: SessionDep, token: WebSiteEditor
) -> Response:
    site = service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    values = _submitted(await request.form())
    body, problems = forms.site_request(values)
    outcome = forms.Outcome[Site](None, problems, 422)
    if not problems:
        outcome = forms.attempt(
            lambda: service.update_site(
                session=session, site=site, data=SiteUpdate.model_validate(body), actor=token.name
            )
        )
    if outcome.saved is not None:
        web_session.flash(request, f"Site {outcome.saved.name!r} saved.")
        return RedirectResponse(f"/sites/{site_id}", status_code=303)
    return _form_page(
        request, token, action=f"/sites/{site_id}/edit", heading=f"Edit {site.name}",
        values=values, problems=outcome.problems, cancel_url=f"/sites/{site_id}",
        status_code=outcome.status_code,
    )  # fmt: skip


def _decide(
    request: Request,
    site_id: int,
    session: SessionDep,
    token: WebAdmin,
    status: SiteStatus,
    reason: str,
    next: str,
) -> Response:
    change = StatusChange.model_validate({"reason": reason})
    site = service.get_site(session=session, site_id=site_id)
    site = service.set_status(
        session=session, site=site, status=status, actor=token.name, reason=change.reason
    )
    web_session.flash(request, f"Site {site.name!r} {status.value}.")
    target = safe_next(next) if next else f"/sites/{site_id}"
    return RedirectResponse(target, status_code=303)


@router.post("/sites/{site_id}/approve", name="web_site_approve")
def approve_site(
    request: Request, site_id: int, session: SessionDep, token: WebAdmin,
    reason: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    return _decide(request, site_id, session, token, SiteStatus.approved, reason, next)


@router.post("/sites/{site_id}/revoke", name="web_site_revoke")
def revoke_site(
    request: Request, site_id: int, session: SessionDep, token: WebAdmin,
    reason: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    return _decide(request, site_id, session, token, SiteStatus.revoked, reason, next)

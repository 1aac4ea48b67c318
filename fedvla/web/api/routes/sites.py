"""/sites: operators (or admins) register sites, admins decide on them, operators keep theirs."""

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from fedvla.core.models import SiteStatus
from fedvla.core.schemas.sites import (
    SiteAuditPublic,
    SiteCreate,
    SitePublic,
    SiteRegistered,
    SitesPublic,
    SiteUpdate,
    StatusChange,
)
from fedvla.core.services import compatibility
from fedvla.core.services import sites as service
from fedvla.web.api.deps import (
    AdminToken,
    ReaderToken,
    SessionDep,
    SiteEditorToken,
    SiteRegistrarToken,
    ensure_site_access,
)
from fedvla.web.api.errors import error_responses
from fedvla.web.api.params import IdPath, Page, page_params

router = APIRouter(prefix="/sites", tags=["sites"])

FORBIDDEN = error_responses(403)


@router.post(
    "", response_model=SiteRegistered, status_code=status.HTTP_201_CREATED, responses=FORBIDDEN
)
def create_site(body: SiteCreate, session: SessionDep, token: SiteRegistrarToken) -> SiteRegistered:
    """Register a site. It starts pending; an admin approves it to let it take part.

    Admins may register any number of sites. An operator token without a site (an enrolment
    token, `fedvla token create NAME --role operator`) registers one, and belongs to it from then
    on; an operator token that has a site gets 403. The answer carries the compatibility report
    of the site's declared features.
    """
    site = service.register_site(session=session, data=body, token=token)
    reports = compatibility.reports_for_site(session=session, site=site)
    return SiteRegistered.model_validate(
        {
            **SitePublic.model_validate(site, from_attributes=True).model_dump(),
            "compatibility": reports,
        }
    )


@router.get("", response_model=SitesPublic)
def list_sites(
    session: SessionDep, token: ReaderToken, page: Annotated[Page, Depends(page_params)]
) -> SitesPublic:
    """All sites; an operator sees only its own."""
    rows, count = service.list_sites(
        session=session, token=token, offset=page.offset, limit=page.limit
    )
    data = [SitePublic.model_validate(row, from_attributes=True) for row in rows]
    return SitesPublic(data=data, count=count)


@router.get("/{site_id}", response_model=SitePublic, responses=FORBIDDEN)
def get_site(site_id: IdPath, session: SessionDep, token: ReaderToken) -> SitePublic:
    site = service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    return SitePublic.model_validate(site, from_attributes=True)


@router.patch("/{site_id}", response_model=SitePublic, responses=FORBIDDEN)
def update_site(
    site_id: IdPath, body: SiteUpdate, session: SessionDep, token: SiteEditorToken
) -> SitePublic:
    """Change a site's details (admins, or the site's operator). Status is not changed here."""
    site = service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    site = service.update_site(session=session, site=site, data=body, actor=token.name)
    return SitePublic.model_validate(site, from_attributes=True)


def _change_status(
    site_id: IdPath,
    new_status: SiteStatus,
    body: StatusChange,
    session: SessionDep,
    token: AdminToken,
) -> SitePublic:
    site = service.get_site(session=session, site_id=site_id)
    site = service.set_status(
        session=session, site=site, status=new_status, actor=token.name, reason=body.reason
    )
    return SitePublic.model_validate(site, from_attributes=True)


@router.post("/{site_id}/approve", response_model=SitePublic, responses=FORBIDDEN)
def approve_site(
    site_id: IdPath, body: StatusChange, session: SessionDep, token: AdminToken
) -> SitePublic:
    """Approve a site (admins); recorded in the site's audit log."""
    return _change_status(site_id, SiteStatus.approved, body, session, token)


@router.post("/{site_id}/revoke", response_model=SitePublic, responses=FORBIDDEN)
def revoke_site(
    site_id: IdPath, body: StatusChange, session: SessionDep, token: AdminToken
) -> SitePublic:
    """Revoke a site (admins): it can no longer take part. Recorded in the audit log."""
    return _change_status(site_id, SiteStatus.revoked, body, session, token)


@router.get("/{site_id}/audit", response_model=list[SiteAuditPublic], responses=FORBIDDEN)
def site_audit(site_id: IdPath, session: SessionDep, token: ReaderToken) -> list[SiteAuditPublic]:
    """Who registered, approved, revoked or re-keyed the site, when and why."""
    service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    rows = service.audit_log(session=session, site_id=site_id)
    return [SiteAuditPublic.model_validate(row) for row in rows]


@router.delete("/{site_id}", status_code=status.HTTP_204_NO_CONTENT, responses=FORBIDDEN)
def delete_site(site_id: IdPath, session: SessionDep, token: AdminToken) -> Response:
    """Delete a site (admins). Its operator tokens are revoked, not deleted, and its audit log is
    kept, so the record of who had access stays."""
    site = service.get_site(session=session, site_id=site_id)
    service.delete_site(session=session, site=site, actor=token.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

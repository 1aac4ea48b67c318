"""Sites in Flower's deployment engine: compatibility reports, startup kits, node status."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from fedvla.core.schemas.common import RowId
from fedvla.core.services import compatibility, experiments
from fedvla.core.services import sites as site_service
from fedvla.core.services.compatibility import CompatibilityReport
from fedvla.sites import startup_kit, superlink_admin
from fedvla.sites.superlink_admin import SiteNode
from fedvla.web.api.deps import (
    ReaderToken,
    SessionDep,
    SettingsDep,
    SiteEditorToken,
    ensure_site_access,
)
from fedvla.web.api.errors import error_responses
from fedvla.web.api.params import IdPath

router = APIRouter(prefix="/sites", tags=["deployment"], responses=error_responses(403))

ZIP_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/zip": {}}, "description": "The kit, a zip."},
    **error_responses(409, _409="The site is not approved"),
}


@router.get(
    "/{site_id}/compatibility", response_model=list[CompatibilityReport] | CompatibilityReport
)
def site_compatibility(
    site_id: IdPath,
    session: SessionDep,
    token: ReaderToken,
    experiment_id: Annotated[RowId | None, Query()] = None,
) -> list[CompatibilityReport] | CompatibilityReport:
    """The site's declared features checked against one experiment (``experiment_id``, which
    the caller must be able to read), or, without it, on their own and against every deployment
    experiment the site is in."""
    site = site_service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    if experiment_id is None:
        return compatibility.reports_for_site(session=session, site=site)
    experiment = experiments.get_readable_experiment(
        session=session, token=token, experiment_id=experiment_id
    )
    return compatibility.check_site_for_experiment(
        session=session, site=site, experiment=experiment
    )


@router.get("/{site_id}/startup-kit", response_class=Response, responses=ZIP_RESPONSE)
def download_startup_kit(
    site_id: IdPath,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    token: SiteEditorToken,
) -> Response:
    """The approved site's startup kit (admins, or that site's operator): CA certificate,
    SuperLink address, flower-supernode command line, compose service, Kubernetes manifest,
    README. It holds no private key: sites generate theirs with ``fedvla site keygen``.
    Its kit.json names this API (the address it was downloaded from), where ``fedvla site
    check`` reads the experiments as they are when it runs."""
    site = site_service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    api_url = str(request.url_for("download_startup_kit", site_id=site_id)).removesuffix(
        f"/sites/{site_id}/startup-kit"
    )
    data = startup_kit.build_kit(session, settings, site, api_url)
    filename = f"fedvla-site-{site.id}-startup-kit.zip"
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/{site_id}/startup-kit/config", response_model=dict[str, Any])
def startup_kit_config(
    site_id: IdPath, session: SessionDep, settings: SettingsDep, token: SiteEditorToken
) -> dict[str, Any]:
    """The site's kit.json as a kit downloaded now would hold it (admins, or that site's
    operator): its experiments' current embodiments, which ``fedvla site check`` checks the
    site's dataset against rather than the copy frozen in the kit."""
    site = site_service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    return startup_kit.current_kit_config(session, settings, site)


@router.get(
    "/{site_id}/node",
    response_model=SiteNode,
    responses=error_responses(503, _503="The SuperLink does not answer"),
)
def site_node(
    site_id: IdPath, session: SessionDep, settings: SettingsDep, token: ReaderToken
) -> SiteNode:
    """The site's SuperNode as the SuperLink sees it: registered, online, last seen."""
    site = site_service.get_site(session=session, site_id=site_id)
    ensure_site_access(token, site_id)
    return superlink_admin.site_node(settings, site)

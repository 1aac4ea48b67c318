"""Dependencies of the dashboard's pages: the signed-in token, its role checks, and CSRF.

The token comes from the server-side session the cookie names (fedvla.web.pages.session,
fedvla.core.services.web_sessions), looked up on every request (an ended session or a revoked token
signs the browser out), and goes through the same role checks as the REST API.
"""

from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from fedvla.core.errors import Forbidden, Unauthorized
from fedvla.core.models import ApiToken
from fedvla.core.services import web_sessions as web_session_service
from fedvla.web.api.deps import SessionDep
from fedvla.web.pages import session as web_session
from fedvla.web.pages.permissions import admin_check, site_editor_check, site_registrar_check

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SignInRequired(Unauthorized):
    """No live session: pages redirect to the sign-in form."""

    def __init__(self) -> None:
        super().__init__("Sign in to continue")


def session_token(request: Request, session: Session) -> ApiToken | None:
    """The live token this browser signed in with, if any."""
    key = web_session.session_key(request)
    if key is None:
        return None
    token = web_session_service.signed_in_token(session=session, key=key)
    if token is None:
        web_session.forget(request)
    return token


async def check_csrf(request: Request) -> None:
    """Every unsafe request carries this session's CSRF token (form field or htmx header)."""
    if request.method not in UNSAFE_METHODS:
        return
    submitted = request.headers.get(web_session.CSRF_HEADER)
    if submitted is None:
        form = await request.form()
        value = form.get(web_session.CSRF_FIELD)
        submitted = value if isinstance(value, str) else None
    if not web_session.csrf_matches(request, submitted):
        raise Forbidden("Missing or wrong CSRF token; reload the page and try again")


def get_web_token(
    request: Request, session: SessionDep, _csrf: Annotated[None, Depends(check_csrf)]
) -> ApiToken:
    token = session_token(request, session)
    if token is None:
        raise SignInRequired()
    return token


WebToken = Annotated[ApiToken, Depends(get_web_token)]


def _web_admin(token: WebToken) -> ApiToken:
    return admin_check(token)


def _web_site_editor(token: WebToken) -> ApiToken:
    return site_editor_check(token)


def _web_site_registrar(token: WebToken) -> ApiToken:
    return site_registrar_check(token)


WebAdmin = Annotated[ApiToken, Depends(_web_admin)]
"""Signed in with an admin token (the REST API's AdminToken check)."""

WebSiteEditor = Annotated[ApiToken, Depends(_web_site_editor)]
"""Admins and operators (the REST API's SiteEditorToken check); pages check which site."""

WebSiteRegistrar = Annotated[ApiToken, Depends(_web_site_registrar)]
"""Admins, and an operator token without a site yet (the REST API's SiteRegistrarToken check)."""

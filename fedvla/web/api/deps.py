"""FastAPI dependencies: settings, database sessions, the caller's token and role checks.

Everything is read from ``request.app.state`` (set by ``create_app``), so each app built in a test
carries its own settings and engine.
"""

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from fedvla.core.config import Settings
from fedvla.core.errors import Forbidden, Unauthorized
from fedvla.core.models import ApiToken, Role
from fedvla.core.services import sites as site_service
from fedvla.core.services import tokens as token_service
from fedvla.core.services import web_sessions as web_session_service
from fedvla.web.pages import session as web_session

# The dependencies that do no I/O are coroutines: FastAPI runs plain functions in its threadpool,
# a hop that costs more than they do.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_session(engine: Annotated[Engine, Depends(get_engine)]) -> AsyncIterator[Session]:
    """One session per request; anything not committed is rolled back when it closes.

    A coroutine: opening a session does no I/O (it connects on its first query, in the route's
    thread), and closing one on SQLite only rolls back a local file's transaction; elsewhere
    the close goes to the threadpool, as it waits on the network.
    """
    session = Session(engine)
    try:
        yield session
    finally:
        if engine.dialect.name == "sqlite":
            session.close()
        else:
            await run_in_threadpool(session.close)


def in_threadpool[**P, T](route: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """A blocking route as a coroutine that runs it in the threadpool.

    FastAPI runs a plain ``def`` route in its threadpool and then goes back there to validate
    what it returned; a coroutine's result is validated on the event loop. One trip instead
    of two, for the busiest reads.
    """

    @functools.wraps(route)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await run_in_threadpool(route, *args, **kwargs)

    return run


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="`Authorization: Bearer fvla_...`; create one with `fedvla token create`.",
)


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_current_token(
    request: Request, session: SessionDep, credentials: BearerCredentials
) -> ApiToken:
    """The caller's token, looked up in the request's session (see authenticate_request)."""
    return authenticate_request(request, session, credentials)


def authenticate_request(
    request: Request, session: Session, credentials: HTTPAuthorizationCredentials | None
) -> ApiToken:
    """The caller's token; 401 when it is missing, unknown or revoked.

    Without a bearer token, a GET or HEAD may use the dashboard's signed-in session cookie (the
    browser's live event stream and checkpoint downloads). Writes always need the bearer token,
    so the cookie cannot be used to forge requests to the API from another site.
    """
    if credentials is None and request.method in ("GET", "HEAD"):
        key = web_session.session_key(request)
        token = web_session_service.signed_in_token(session=session, key=key)
        if token is not None:
            return token
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized()
    token = token_service.authenticate(session=session, secret=credentials.credentials)
    if token is None:
        raise Unauthorized()
    return token


CurrentToken = Annotated[ApiToken, Depends(get_current_token)]


def require_role(*roles: Role) -> Callable[[ApiToken], ApiToken]:
    """A dependency that lets through only tokens with one of ``roles`` (403 otherwise)."""
    allowed = frozenset(roles)

    def check(token: CurrentToken) -> ApiToken:
        if token.role not in allowed:
            raise Forbidden(f"Needs the {' or '.join(sorted(allowed))} role")
        return token

    return check


AdminToken = Annotated[ApiToken, Depends(require_role(Role.admin))]
"""Admin only: writes to experiments, site approval, tokens, runs."""

ReaderToken = CurrentToken
"""Any valid token; routes narrow what an operator sees (its own site, its experiments)."""

SiteEditorToken = Annotated[ApiToken, Depends(require_role(Role.admin, Role.operator))]
"""Admins, and operators for their own site (the route checks which site)."""


def _site_registrar(token: CurrentToken) -> ApiToken:
    site_service.check_can_register(token)
    return token


SiteRegistrarToken = Annotated[ApiToken, Depends(_site_registrar)]
"""Admins, and an operator token without a site yet (it may register one, its own)."""


def ensure_site_access(token: ApiToken, site_id: int) -> None:
    """Operators reach only their own site; admins and viewers every site."""
    if token.role == Role.operator and token.site_id != site_id:
        raise Forbidden("Operators may only access their own site")

"""The dashboard's cookie: a signed cookie holding the server-side session's key and a CSRF token.

The cookie is Starlette's signed session (itsdangerous, keyed by fedvla.core.security's
``session_secret_key``): HttpOnly, SameSite=Lax, and Secure whenever the request came over https
(behind a TLS proxy, run uvicorn with ``--proxy-headers`` so the scheme is the client's). It
never holds the API token, only the key of a row of fedvla.core.services.web_sessions, so signing
out or revoking the token ends the session on the server at the next request.
"""

import hmac
import secrets
from typing import Any

from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

SESSION_COOKIE = "fedvla_session"
SESSION_MAX_AGE_S = 12 * 60 * 60
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_SESSION_KEY = "session_key"
_CSRF = "csrf"
_FLASHES = "flashes"


class SessionCookieMiddleware:
    """Starlette's SessionMiddleware, with the Secure flag chosen per request by its scheme."""

    def __init__(self, app: ASGIApp, secret_key: str) -> None:
        options: dict[str, Any] = {
            "secret_key": secret_key,
            "session_cookie": SESSION_COOKIE,
            "max_age": SESSION_MAX_AGE_S,
            "same_site": "lax",
        }
        self._plain = SessionMiddleware(app, https_only=False, **options)
        self._secure = SessionMiddleware(app, https_only=True, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        secure = scope.get("scheme") in ("https", "wss")
        await (self._secure if secure else self._plain)(scope, receive, send)


def _session(conn: HTTPConnection) -> dict[str, Any]:
    """The session dict, or an empty one where the middleware is not installed (bare API apps)."""
    if "session" not in conn.scope:
        return {}
    return conn.session


def session_key(conn: HTTPConnection) -> str | None:
    """The key of the server-side session this cookie claims (not yet checked against it)."""
    value = _session(conn).get(_SESSION_KEY)
    return value if isinstance(value, str) else None


def sign_in(conn: HTTPConnection, key: str) -> None:
    session = _session(conn)
    session.clear()  # a fresh CSRF token too: nothing from before sign-in carries over
    session[_SESSION_KEY] = key
    session[_CSRF] = secrets.token_urlsafe(32)


def forget(conn: HTTPConnection) -> None:
    """Clears the cookie (the server-side session is ended by fedvla.core.services.web_sessions)."""
    _session(conn).clear()


def csrf_token(conn: HTTPConnection) -> str:
    """This session's CSRF token, created on first use (the sign-in form needs one too)."""
    session = _session(conn)
    token = session.get(_CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[_CSRF] = token
    return token


def csrf_matches(conn: HTTPConnection, submitted: str | None) -> bool:
    expected = _session(conn).get(_CSRF)
    if not isinstance(expected, str) or not submitted:
        return False
    return hmac.compare_digest(expected.encode(), submitted.encode())


def flash(conn: HTTPConnection, message: str, level: str = "success") -> None:
    """A message shown once, on the next page this session renders."""
    session = _session(conn)
    session[_FLASHES] = [*session.get(_FLASHES, []), {"message": message, "level": level}]


def pop_flashes(conn: HTTPConnection) -> list[dict[str, str]]:
    session = _session(conn)
    return list(session.pop(_FLASHES, [])) if _FLASHES in session else []

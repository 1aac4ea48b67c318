"""Sign-in with an API token, sign-out, and the home page."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response

from fedvla.core.services import tokens as token_service
from fedvla.core.services import web_sessions as web_session_service
from fedvla.web.api.deps import SessionDep
from fedvla.web.pages import session as web_session
from fedvla.web.pages.contexts import SignInPage
from fedvla.web.pages.deps import WebToken, check_csrf, session_token
from fedvla.web.pages.errors import HtmlRoute
from fedvla.web.pages.templating import render

router = APIRouter(route_class=HtmlRoute, include_in_schema=False)

BAD_TOKEN = "That token is unknown or revoked."


def safe_next(target: str | None) -> str:
    """Only a path on this site: an open redirect would make the sign-in page a phishing aid."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/experiments"


@router.get("/", name="web_home")
def home(request: Request, session: SessionDep) -> Response:
    signed_in = session_token(request, session) is not None
    return RedirectResponse("/experiments" if signed_in else "/signin", status_code=303)


@router.get("/signin", name="web_sign_in_form")
def sign_in_form(request: Request, session: SessionDep, next: str | None = None) -> Response:
    if session_token(request, session) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "signin.html", SignInPage(next=safe_next(next)), token=None)


@router.post("/signin", name="web_sign_in", dependencies=[Depends(check_csrf)])
def sign_in(
    request: Request,
    session: SessionDep,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    found = token_service.authenticate(session=session, secret=token.strip())
    if found is None or found.id is None:
        page = SignInPage(next=safe_next(next), error=BAD_TOKEN)
        return render(request, "signin.html", page, token=None, status_code=401)
    web_session.sign_in(request, web_session_service.start(session=session, token=found))
    web_session.flash(request, f"Signed in as {found.name} ({found.role}).")
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/signout", name="web_sign_out")
def sign_out(request: Request, session: SessionDep, _token: WebToken) -> Response:
    web_session_service.end(session=session, key=web_session.session_key(request))
    web_session.forget(request)
    return RedirectResponse("/signin", status_code=303)

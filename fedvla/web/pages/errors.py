"""Errors on pages: the same exceptions as the API, shown as HTML instead of JSON.

Pages use ``HtmlRoute`` as their route class. It turns ``SignInRequired`` into a redirect to the
sign-in form and any other error the API would answer (the services' domain errors, mapped by
fedvla.web.api.errors, and FastAPI's own) into ``error.html`` with the API's status code, detail and
field problems.
"""

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlmodel import Session
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

from fedvla.core.errors import DomainError, FieldProblem
from fedvla.web.api.errors import http_status, problems_from_pydantic
from fedvla.web.pages.contexts import ErrorPage
from fedvla.web.pages.deps import SignInRequired, session_token
from fedvla.web.pages.templating import is_fragment_request, render


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = str(request.url_for("web_sign_in_form")) + "?" + urlencode({"next": target})
    if is_fragment_request(request):  # htmx follows HX-Redirect with a full page load
        return Response(status_code=401, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def error_page(
    request: Request, status_code: int, detail: str, errors: list[FieldProblem]
) -> Response:
    with Session(request.app.state.engine) as session:
        token = session_token(request, session)
    page = ErrorPage(status_code=status_code, detail=detail, errors=errors)
    response = render(
        request, "error.html", page, token=token, fragment="_error.html", status_code=status_code
    )
    if is_fragment_request(request):  # an error replaces the page's content, not the fragment
        response.headers["HX-Retarget"] = "#content"
        response.headers["HX-Reswap"] = "innerHTML"
    return response


class HtmlRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def html_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                return sign_in_redirect(request)
            except (RequestValidationError, ValidationError) as exc:
                problems = problems_from_pydantic(list(exc.errors()))
                return error_page(request, 422, "Validation failed", problems)
            except DomainError as exc:
                return error_page(request, http_status(exc), exc.detail, exc.errors)
            except HTTPException as exc:
                return error_page(request, exc.status_code, str(exc.detail), [])

        return html_errors


MACHINE_PATHS = ("/api/", "/openapi.json", "/docs", "/redoc", "/static/")
"""Paths whose errors stay JSON whoever asks: the API, its documents, static files."""


def wants_page(request: Request) -> bool:
    """An error of a dashboard path is a page, unless the client asks for JSON only."""
    if request.url.path.startswith(MACHINE_PATHS):
        return False
    accept = request.headers.get("accept", "")
    return not ("application/json" in accept and "text/html" not in accept)


def install_page_errors(app: FastAPI) -> None:
    """Unknown dashboard paths and wrong methods answer the error page; the API's stay JSON.

    Runs after fedvla.web.api.errors.install_error_handlers, whose handler it wraps."""
    api_handler = app.exception_handlers[HTTPException]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if not wants_page(request):
            return await api_handler(request, exc)  # type: ignore[misc]
        return error_page(request, exc.status_code, str(exc.detail), [])

    app.add_exception_handler(HTTPException, http_error)

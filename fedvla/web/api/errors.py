"""One JSON shape for every error the API answers, and the status code of each domain error.

Body: ``{"detail": "<short, stable sentence>", "errors": [{"field": ..., "reason": ...}]}``.
``errors`` is empty unless specific fields are at fault; a field sent outside the JSON body (a
path or query parameter, a header) also says where (``"location": "query"``).
"""

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DataError, IntegrityError
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedvla.core.errors import (
    Conflict,
    DomainError,
    FieldProblem,
    Forbidden,
    Gone,
    InvalidFields,
    Location,
    NotFound,
    Unauthorized,
    Unavailable,
)

_LOCATIONS: tuple[Location, ...] = ("body", "path", "query", "header", "cookie")


class ErrorBody(BaseModel):
    """What every 4xx and 5xx answer carries."""

    detail: str = Field(examples=["Experiment not found"])
    errors: list[FieldProblem] = Field(default_factory=list)


_STATUS_OF: dict[type[DomainError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    InvalidFields: 422,
    Unavailable: 503,
}
_HEADERS_OF: dict[type[DomainError], dict[str, str]] = {
    Unauthorized: {"WWW-Authenticate": "Bearer"},
}


def http_status(error: DomainError) -> int:
    """The status code the API and the pages answer a domain error with."""
    for kind in type(error).__mro__:
        if kind in _STATUS_OF:
            return _STATUS_OF[kind]
    raise TypeError(f"{type(error).__name__} is none of the kinds in fedvla.core.errors")


def _http_headers(error: DomainError) -> dict[str, str] | None:
    return next((_HEADERS_OF[kind] for kind in type(error).__mro__ if kind in _HEADERS_OF), None)


ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "No bearer token, or an unknown or revoked one",
    403: "The token's role does not allow this",
    404: "Unknown id",
    409: "Duplicate name or conflicting state",
    410: "The checkpoint's weights were removed from disk or no longer match their recorded sha256 "
    "(an event on the run says which)",
    413: "Request body larger than FEDVLA_MAX_REQUEST_BYTES",
    422: "Malformed JSON or invalid fields",
    503: "A service it needs does not answer",
}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the errors a route answers beyond those its inputs imply (those are
    added by ``document_input_errors``); ``descriptions`` overrides by ``_503="..."``."""
    return {
        status: {
            "model": ErrorBody,
            "description": descriptions.get(f"_{status}", ERROR_DESCRIPTIONS[status]),
        }
        for status in statuses
    }


def _implied_errors(operation: dict[str, Any], method: str) -> list[int]:
    parameters = operation.get("parameters", [])
    has_input = bool(parameters) or "requestBody" in operation
    implied = {
        401: "security" in operation,
        404: any(parameter["in"] == "path" for parameter in parameters),
        409: method != "get",  # a write may meet a constraint another request just took
        413: method != "get",  # BodySizeLimit reads the body of every method but GET
        422: has_input,
    }
    return [status for status, applies in implied.items() if applies]


def document_input_errors(document: dict[str, Any]) -> dict[str, Any]:
    """Adds to each operation of an OpenAPI document the errors its shape implies: 401 with a
    bearer token, 404 with an id in the path, 409 and 413 for writes, 422 with any input."""
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    schemas = document["components"]["schemas"]
    assert "ErrorBody" in schemas
    for operations in document["paths"].values():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.pop("422", None)  # FastAPI's own HTTPValidationError, which we never send
            for status in _implied_errors(operation, method):
                responses.setdefault(
                    str(status),
                    {
                        "description": ERROR_DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": error_body}},
                    },
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def error_response(
    status_code: int,
    detail: str,
    errors: Sequence[FieldProblem] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(detail=detail, errors=list(errors))
    content = body.model_dump(mode="json", exclude_none=True)
    return JSONResponse(content, status_code=status_code, headers=headers)


def _field_path(loc: Sequence[int | str]) -> str:
    """('body', 'partition', 'num_clients') -> 'partition.num_clients'."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _location(loc: Sequence[int | str]) -> Location | None:
    """Named for parameters and headers; the body's own fields need no location."""
    where = next((place for place in _LOCATIONS if loc and loc[0] == place), None)
    return None if where == "body" and len(loc) > 1 else where


def problems_from_pydantic(errors: Sequence[Any], prefix: Sequence[str] = ()) -> list[FieldProblem]:
    return [
        FieldProblem(
            field=_field_path([*prefix, *error["loc"]]),
            reason=error["msg"].removeprefix("Value error, "),
            location=None if prefix else _location(error["loc"]),
        )
        for error in errors
    ]


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route of the request's path answers (Starlette names one route's)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


def _unparsable_body(exc: HTTPException) -> FieldProblem | None:
    """FastAPI answers 400 when ``json.loads`` fails with something other than a syntax error."""
    if isinstance(exc.__cause__, UnicodeDecodeError):
        return FieldProblem(
            field="body", reason=f"not UTF-8 text: {exc.__cause__.reason}", location="body"
        )
    if isinstance(exc.__cause__, RecursionError):
        return FieldProblem(field="body", reason="nested too deeply", location="body")
    return None


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return error_response(http_status(exc), exc.detail, exc.errors, _http_headers(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own errors: unknown path, wrong method, unreadable body."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    problem = _unparsable_body(exc) if exc.status_code == 400 else None
    if problem is not None:
        return error_response(422, "Malformed JSON", [problem])
    return error_response(exc.status_code, detail, (), headers)


async def _request_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        reason = next(e for e in errors if e.get("type") == "json_invalid")
        ctx = reason.get("ctx") or {}
        where = reason["loc"][-1]
        message = f"{ctx.get('error', 'invalid JSON')} at character {where}"
        problem = FieldProblem(field="body", reason=message, location="body")
        return error_response(422, "Malformed JSON", [problem])
    return error_response(422, "Validation failed", problems_from_pydantic(errors))


async def _pydantic_error(_request: Request, exc: Exception) -> JSONResponse:
    """A model built from client input inside a handler."""
    assert isinstance(exc, ValidationError)
    return error_response(422, "Validation failed", problems_from_pydantic(exc.errors()))


async def _integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    """A constraint the services did not foresee: still the client's conflict, never a 500."""
    return error_response(409, "Conflicts with stored data")


async def _data_error(_request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold (out of range, bad encoding) that validation let through."""
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    return error_response(
        422, "Value cannot be stored", [FieldProblem(field="body", reason=reason)]
    )


async def _overflow_error(_request: Request, exc: Exception) -> JSONResponse:
    """A number too large for the database driver (SQLite's 64-bit integers)."""
    return error_response(
        422, "Value cannot be stored", [FieldProblem(field="body", reason="number out of range")]
    )


async def _unexpected_error(_request: Request, _exc: Exception) -> JSONResponse:
    return error_response(500, "Internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(ValidationError, _pydantic_error)
    app.add_exception_handler(IntegrityError, _integrity_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(OverflowError, _overflow_error)
    app.add_exception_handler(Exception, _unexpected_error)


class BodySizeLimit:
    """Answers 413 when a body is larger than ``max_bytes``.

    Content-Length is checked first; then the body is read (at most ``max_bytes`` + 1 bytes are
    held) and counted, so a chunked upload that lies or omits the header is refused too, before
    the application sees any of it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "Request body too large",
            [
                FieldProblem(
                    field="body", reason=f"larger than {self.max_bytes} bytes", location="body"
                )
            ],
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

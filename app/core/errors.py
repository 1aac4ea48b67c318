"""One JSON shape for every error the API answers, and the exceptions that produce it.

Body: ``{"detail": "<short, stable sentence>", "errors": [{"field": ..., "reason": ...}]}``.
``errors`` is empty unless specific fields are at fault.
"""

from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DataError, IntegrityError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class FieldProblem(BaseModel):
    field: str = Field(examples=["num_rounds"], description="Dotted path of the field at fault.")
    reason: str = Field(examples=["Input should be greater than or equal to 1"])


class ErrorBody(BaseModel):
    """What every 4xx and 5xx answer carries."""

    detail: str = Field(examples=["Experiment not found"])
    errors: list[FieldProblem] = Field(default_factory=list)


class ApiError(HTTPException):
    """An HTTP error with the canonical body; raise it from services and routes."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        errors: Sequence[FieldProblem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.errors = list(errors)


class NotFound(ApiError):
    def __init__(self, entity: str) -> None:
        super().__init__(404, f"{entity} not found")


class Conflict(ApiError):
    def __init__(self, detail: str, field: str | None = None) -> None:
        errors = [FieldProblem(field=field, reason="already in use")] if field else []
        super().__init__(409, detail, errors)


class Forbidden(ApiError):
    def __init__(self, detail: str = "Not allowed for this token") -> None:
        super().__init__(403, detail)


class Unauthorized(ApiError):
    def __init__(self, detail: str = "Missing or invalid bearer token") -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": "Bearer"})


class InvalidFields(ApiError):
    """422 for input that parses but cannot be used; each problem names its field."""

    def __init__(self, problems: Sequence[FieldProblem], detail: str = "Validation failed") -> None:
        super().__init__(422, detail, problems)

    @classmethod
    def one(cls, field: str, reason: str) -> "InvalidFields":
        return cls([FieldProblem(field=field, reason=reason)])


def _nul_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, str) and "\x00" in value:
        yield path or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nul_paths(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_paths(item, f"{path}.{index}" if path else str(index))


def reject_nul_characters(data: Any) -> None:
    """422 for text with NUL characters, which PostgreSQL cannot store (SQLite would)."""
    problems = [
        FieldProblem(field=path, reason="contains a NUL character") for path in _nul_paths(data, "")
    ]
    if problems:
        raise InvalidFields(problems)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "No bearer token, or an unknown or revoked one",
        403: "The token's role does not allow this",
        404: "Unknown id",
        409: "Duplicate name or conflicting state",
        413: "Request body larger than FEDVLA_MAX_REQUEST_BYTES",
        422: "Malformed JSON or invalid fields",
    }.items()
}
"""``responses=`` for routers, so the OpenAPI document shows the error shape."""


def error_response(
    status_code: int,
    detail: str,
    errors: Sequence[FieldProblem] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(detail=detail, errors=list(errors))
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def _field_path(loc: Sequence[int | str]) -> str:
    """('body', 'partition', 'num_clients') -> 'partition.num_clients'."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def problems_from_pydantic(errors: Sequence[Any], prefix: Sequence[str] = ()) -> list[FieldProblem]:
    return [
        FieldProblem(
            field=_field_path([*prefix, *error["loc"]]),
            reason=error["msg"].removeprefix("Value error, "),
        )
        for error in errors
    ]


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    errors = exc.errors if isinstance(exc, ApiError) else []
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, detail, errors, headers)


async def _request_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        reason = next(e for e in errors if e.get("type") == "json_invalid")
        ctx = reason.get("ctx") or {}
        where = reason["loc"][-1]
        message = f"{ctx.get('error', 'invalid JSON')} at character {where}"
        return error_response(422, "Malformed JSON", [FieldProblem(field="body", reason=message)])
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
            [FieldProblem(field="body", reason=f"larger than {self.max_bytes} bytes")],
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

"""What the services refuse, and why: domain errors with a short, stable detail and the fields at
fault, free of HTTP.

The API and the pages map each kind to its status code and the canonical error body in one place,
fedvla.web.api.errors.
"""

from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

Location = Literal["body", "path", "query", "header", "cookie"]


class FieldProblem(BaseModel):
    field: str = Field(examples=["num_rounds"], description="Dotted path of the field at fault.")
    reason: str = Field(examples=["Input should be greater than or equal to 1"])
    location: Location | None = Field(
        None,
        examples=["query"],
        description="Where the request carried the field; absent for the JSON body's fields.",
    )


class DomainError(Exception):
    """A request the services refuse; raise one of its kinds below."""

    def __init__(self, detail: str, errors: Sequence[FieldProblem] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)


class NotFound(DomainError):
    def __init__(self, entity: str) -> None:
        super().__init__(f"{entity} not found")


class Conflict(DomainError):
    """The request clashes with stored state: a name taken, a run final, a checkpoint not kept.

    A conflict about one field names the field and the reason it conflicts.
    """

    def __init__(
        self,
        detail: str,
        errors: Sequence[FieldProblem] = (),
        *,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        if (field is None) != (reason is None):
            raise TypeError("a Conflict names both its field and the reason, or neither")
        if field is not None and reason is not None:
            errors = [*errors, FieldProblem(field=field, reason=reason)]
        super().__init__(detail, errors)


class Forbidden(DomainError):
    def __init__(self, detail: str = "Not allowed for this token") -> None:
        super().__init__(detail)


class Unauthorized(DomainError):
    def __init__(self, detail: str = "Missing or invalid bearer token") -> None:
        super().__init__(detail)


class InvalidFields(DomainError):
    """Input that parses but cannot be used; each problem names its field."""

    def __init__(self, problems: Sequence[FieldProblem], detail: str = "Validation failed") -> None:
        super().__init__(detail, problems)

    @classmethod
    def one(cls, field: str, reason: str) -> "InvalidFields":
        return cls([FieldProblem(field=field, reason=reason)])


class Gone(DomainError):
    """Stored files the request needs were removed or no longer match their record."""


class Unavailable(DomainError):
    """A service the request needs (the broker, the SuperLink) does not answer."""


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
    """InvalidFields for text with NUL characters, which PostgreSQL cannot store (SQLite would)."""
    problems = [
        FieldProblem(field=path, reason="contains a NUL character") for path in _nul_paths(data, "")
    ]
    if problems:
        raise InvalidFields(problems)

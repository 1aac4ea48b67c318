"""Shapes shared by every resource."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, Field, PlainSerializer, TypeAdapter, create_model

from app.models import as_utc

UtcDatetime = Annotated[
    datetime, AfterValidator(as_utc), PlainSerializer(as_utc, return_type=datetime)
]
"""Every timestamp the API answers: RFC 3339 in UTC with its offset (``...T12:00:00Z``), however
the model was built (validated or constructed)."""

_UTC_DATETIME: TypeAdapter[datetime] = TypeAdapter(UtcDatetime)


def utc_json(value: datetime) -> str:
    """A timestamp as the API writes it, for payloads that are not response models (SSE)."""
    text: str = _UTC_DATETIME.dump_python(value, mode="json")
    return text


MAX_PAGE_SIZE = 200
MAX_OFFSET = 10**9
MAX_ID = 2**31 - 1
"""Row ids (and other integer columns) are 32-bit on PostgreSQL; a larger id can name nothing."""

RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
"""A row id inside a request body."""

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
"""A row id in the URL: ``def get_x(x_id: IdPath)``."""

RoundPath = Annotated[int, Path(ge=0, le=MAX_ID)]
"""A round number in the URL (round 0 is the initial policy)."""


class Page(BaseModel):
    """Pagination query parameters: ``?offset=0&limit=50``."""

    offset: int = 0
    limit: int = 50


def page_params(
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Rows to return.")] = 50,
) -> Page:
    return Page(offset=offset, limit=limit)


def all_optional(model: type[BaseModel]) -> type[BaseModel]:
    """A model with each of ``model``'s fields, optional (None: not given); a given value meets
    the field's bounds and validators, which apply to it and not to None."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        given: Any = info.annotation
        if info.metadata:
            given = Annotated[(given, *info.metadata)]
        fields[name] = (
            given | None,
            Field(None, description=info.description, examples=info.examples),
        )
    optional: type[BaseModel] = create_model(f"{model.__name__}Fields", **fields)
    return optional

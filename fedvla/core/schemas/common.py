"""Shapes shared by every resource."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, PlainSerializer, TypeAdapter, create_model

from fedvla.core.models import as_utc

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

"""Shapes shared by every resource."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, Field


def _assume_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_assume_utc)]
"""A timestamp in responses; SQLite hands back naive UTC, PostgreSQL aware: both leave as UTC."""

MAX_PAGE_SIZE = 200
MAX_OFFSET = 10**9
MAX_ID = 2**31 - 1
"""Row ids are 32-bit on PostgreSQL; a larger id can name nothing."""

RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
"""A row id inside a request body."""

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
"""A row id in the URL: ``def get_x(x_id: IdPath)``."""


class Page(BaseModel):
    """Pagination query parameters: ``?offset=0&limit=50``."""

    offset: int = 0
    limit: int = 50


def page_params(
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Rows to return.")] = 50,
) -> Page:
    return Page(offset=offset, limit=limit)

"""Shapes shared by every resource."""

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel

MAX_PAGE_SIZE = 200


class Page(BaseModel):
    """Pagination query parameters: ``?offset=0&limit=50``."""

    offset: int = 0
    limit: int = 50


def page_params(
    offset: Annotated[int, Query(ge=0, description="Rows to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Rows to return.")] = 50,
) -> Page:
    return Page(offset=offset, limit=limit)

"""Path and query parameters the API's routes share."""

from typing import Annotated

from fastapi import Path, Query
from pydantic import BaseModel

from fedvla.core.schemas.common import MAX_ID, MAX_OFFSET, MAX_PAGE_SIZE

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

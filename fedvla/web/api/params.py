"""Path and query parameters the API's routes share."""

from datetime import date
from typing import Annotated

from fastapi import Depends, Path, Query
from pydantic import BaseModel, BeforeValidator

from fedvla.core.models import RunStatus
from fedvla.core.schemas.common import MAX_ID, MAX_OFFSET, MAX_PAGE_SIZE, RowId
from fedvla.core.services.run_search import FINAL_LOSS_MEANING, RunQuery, RunSort, SortOrder

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


def _empty_is_none(value: object) -> object:
    """A form's empty input (``?status=``) means "not given", as the dashboard's filters send."""
    return None if value == "" else value


def run_query_params(
    page: Annotated[Page, Depends(page_params)],
    q: Annotated[
        str,
        Query(
            max_length=200,
            description="Text in the experiment's name or the run's notes, or the run's id.",
        ),
    ] = "",
    experiment_id: Annotated[
        RowId | None, BeforeValidator(_empty_is_none), Query(description="Only this experiment.")
    ] = None,
    run_status: Annotated[
        RunStatus | None, BeforeValidator(_empty_is_none), Query(alias="status")
    ] = None,
    created_from: Annotated[
        date | None,
        BeforeValidator(_empty_is_none),
        Query(description="Created on or after this day (UTC), YYYY-MM-DD."),
    ] = None,
    created_to: Annotated[
        date | None,
        BeforeValidator(_empty_is_none),
        Query(description="Created on or before this day (UTC), YYYY-MM-DD."),
    ] = None,
    sort: Annotated[
        RunSort,
        Query(
            description="experiment, status, created, duration or final_loss ("
            + FINAL_LOSS_MEANING
            + ")"
        ),
    ] = RunSort.created,
    order: Annotated[SortOrder, Query(description="asc or desc.")] = SortOrder.desc,
) -> RunQuery:
    """The runs list's search, filters, sort and page (the API's and the dashboard's)."""
    return RunQuery(
        text=q,
        experiment_id=experiment_id,
        status=run_status,
        created_from=created_from,
        created_to=created_to,
        sort=sort,
        order=order,
        offset=page.offset,
        limit=page.limit,
    )

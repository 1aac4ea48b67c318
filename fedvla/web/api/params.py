"""Path and query parameters the API's routes share."""

import re
from datetime import date
from typing import Annotated, Any

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
    return None if value == "" else value


def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema that also takes "" (a form's empty input: not given)."""
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


EmptyIsNone = BeforeValidator(_empty_is_none)
"""The dashboard's filter form sends its empty inputs (``?status=``): they mean "not given"."""


def _day_or_empty(value: object) -> object:
    """A day as YYYY-MM-DD only (pydantic would also read ``0`` as a Unix time)."""
    if value == "":
        return None
    if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a day as YYYY-MM-DD")
    return value


DayOrEmpty = BeforeValidator(_day_or_empty)


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
        RowId | None,
        EmptyIsNone,
        Query(
            description="Only this experiment.",
            json_schema_extra=_or_empty({"type": "integer", "minimum": 1, "maximum": MAX_ID}),
        ),
    ] = None,
    run_status: Annotated[
        RunStatus | None,
        EmptyIsNone,
        Query(
            alias="status",
            json_schema_extra=_or_empty({"enum": [status.value for status in RunStatus]}),
        ),
    ] = None,
    created_from: Annotated[
        date | None,
        DayOrEmpty,
        Query(
            description="Created on or after this day (UTC), YYYY-MM-DD.",
            json_schema_extra=_or_empty({"type": "string", "format": "date"}),
        ),
    ] = None,
    created_to: Annotated[
        date | None,
        DayOrEmpty,
        Query(
            description="Created on or before this day (UTC), YYYY-MM-DD.",
            json_schema_extra=_or_empty({"type": "string", "format": "date"}),
        ),
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

"""A run's rounds and its clients' per-round metrics as CSV or JSON files, with the same columns
and the same redaction as the API's /rounds and /clients answers."""

import csv
import io
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from fedvla.core.models import ApiToken
from fedvla.core.schemas.runs import ClientMetricPublic, RoundMetricPublic
from fedvla.core.services import runs
from fedvla.core.services.redaction import for_reader


class ExportTable(StrEnum):
    rounds = "rounds"
    clients = "clients"


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"


COLUMNS: dict[ExportTable, tuple[str, ...]] = {
    ExportTable.rounds: tuple(RoundMetricPublic.model_fields),
    ExportTable.clients: tuple(ClientMetricPublic.model_fields),
}

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export_rows(
    session: Session, run_id: int, table: ExportTable, token: ApiToken
) -> list[dict[str, Any]]:
    """The rows as JSON values, oldest round first; 403/404 as reading the run."""
    runs.get_run(session, run_id, token)
    if table == ExportTable.rounds:
        rows = [
            RoundMetricPublic.model_validate(row).model_dump(mode="json")
            for row in runs.round_metrics(session, run_id)
        ]
    else:
        rows = [
            ClientMetricPublic.model_validate(row).model_dump(mode="json")
            for row in runs.client_metrics(session, run_id)
        ]
    redacted: list[dict[str, Any]] = for_reader(token, rows)
    return redacted


def _cell(value: Any) -> Any:
    """Text a spreadsheet would run as a formula is quoted (numbers stay numbers)."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(name)) for name in columns])
    return out.getvalue()


def filename(run_id: int, table: ExportTable, fmt: ExportFormat) -> str:
    return f"run-{run_id}-{table.value}.{fmt.value}"

"""A run's federation.log as its readers may see it: whole for admins, server paths hidden for
the others (as in events and pages, fedvla.core.services.redaction)."""

from collections.abc import Iterator
from pathlib import Path

from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.errors import NotFound
from fedvla.core.models import ApiToken
from fedvla.core.services import run_files, runs
from fedvla.core.services.redaction import for_reader


def log_file(session: Session, settings: Settings, run_id: int, token: ApiToken) -> Path:
    """The run's log; 403/404 as reading the run, 404 before a worker started it."""
    run = runs.get_run(session, run_id, token)
    path = run_files.log_path(settings, run.storage_key)
    if not path.is_file():
        raise NotFound(f"Log of run {run_id} (a worker writes it once it starts the run)")
    return path


def log_lines(path: Path, token: ApiToken) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            yield for_reader(token, line)


def filename(run_id: int) -> str:
    return f"run-{run_id}-{run_files.FEDERATION_LOG}"

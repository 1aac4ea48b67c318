"""Where a run's files live: ``<data dir>/runs/<storage key>/`` (checkpoints, federation.log).

The storage key is random and stored on the run row when it is created, so two runs never share a
folder even if a database handed out an id twice; the worker, the ServerApp and the web app all
find the folder through this module.
"""

import shutil
from collections.abc import Iterable
from pathlib import Path

from sqlmodel import Session, select

from fedvla.core.config import Settings
from fedvla.core.models import Run

FEDERATION_LOG = "federation.log"
"""The run's log, in its folder: the federation process's output (simulation and deployment) and
the log of a deployment run's ServerApp on the SuperLink."""


def run_dir(settings: Settings, storage_key: str) -> Path:
    return settings.checkpoint_dir / storage_key


def federation_log(run_dir: Path) -> Path:
    return run_dir / FEDERATION_LOG


def run_dir_of(session: Session, settings: Settings, run_id: int) -> Path:
    key = session.exec(select(Run.storage_key).where(Run.id == run_id)).one()
    return run_dir(settings, key)


def remove_run_dirs(settings: Settings, storage_keys: Iterable[str]) -> None:
    for key in storage_keys:
        shutil.rmtree(run_dir(settings, key), ignore_errors=True)


def log_path(settings: Settings, storage_key: str) -> Path:
    return federation_log(run_dir(settings, storage_key))

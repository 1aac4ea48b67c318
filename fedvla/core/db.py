"""Database engine and sessions."""

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import create_engine

SQLITE_POOL_SIZE = 40
"""Connections kept open to a SQLite file: as many as the threadpool has threads (AnyIO's 40)."""


def make_engine(database_url: str) -> Engine:
    """An engine for the URL; SQLite gets WAL and foreign keys, as web and worker share it."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        pool: dict[str, Any] = {}
        if path and path != ":memory:":
            # A SQLite connection is a file handle: never make a request wait for one. A bounded
            # pool (5 + 10) could stall the app for its 30 s timeout under a burst of requests,
            # each holding a connection between its trips to the threadpool while the threads
            # wait for connections.
            pool = {"pool_size": SQLITE_POOL_SIZE, "max_overflow": -1}
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True)

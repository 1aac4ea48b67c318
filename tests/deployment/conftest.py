"""The API fixtures of tests/api (an app per test on SQLite and PostgreSQL, actors)."""

from tests.api.conftest import app, client, session, world

__all__ = ["app", "client", "session", "world"]

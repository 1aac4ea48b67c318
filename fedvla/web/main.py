"""The web application: ``create_app(settings)`` builds one, with its own settings and engine.

Serve it with ``fedvla serve`` or ``uvicorn --factory fedvla.web.main:create_app``.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.services import runs as run_service
from fedvla.core.services.event_feed import EventHub
from fedvla.web.api.errors import BodySizeLimit, document_input_errors, install_error_handlers
from fedvla.web.api.routes import (
    checkpoints,
    deployment,
    experiments,
    health,
    runs,
    sites,
    tokens,
    workers,
)
from fedvla.web.pages.mount import install_web

API_PREFIX = "/api/v1"

OPENAPI_TAGS = [
    {
        "name": "health",
        "description": "Is the server able to work: database, broker, and Redis when set.",
    },
    {"name": "experiments", "description": "Federation definitions that runs are launched from."},
    {"name": "sites", "description": "Robot sites: their datasets, keys and approval status."},
    {"name": "tokens", "description": "API tokens and their roles (admins only)."},
    {"name": "runs", "description": "Launch, follow (live events), cancel and resume federations."},
    {"name": "checkpoints", "description": "The policies a run saved, as downloads."},
    {"name": "workers", "description": "The GPU workers that run federations."},
    {
        "name": "deployment",
        "description": "Sites in Flower's deployment engine: compatibility, startup kits, nodes.",
    },
]

DESCRIPTION = """
Federated fine-tuning of SmolVLA across robot sites.

Every route except `/health` needs `Authorization: Bearer <token>`. Roles: **admin** manages
everything; **operator** sees and edits only its own site and reads the experiments that site takes
part in; **viewer** reads everything. Errors answer
`{"detail": "...", "errors": [{"field": "...", "reason": "..."}]}` (with `"location"` for a path
or query parameter or a header). Timestamps are RFC 3339 in UTC with their offset.
"""


def _version() -> str:
    try:
        return version("fedvla")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    event_hub = EventHub(engine, settings.redis_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with run_service.reaper(engine, settings):
            yield
            await event_hub.aclose()
        engine.dispose()

    app = FastAPI(
        title="fedvla",
        version=_version(),
        description=DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.event_hub = event_hub
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)

    app.include_router(health.router, prefix=API_PREFIX)
    app.include_router(experiments.router, prefix=API_PREFIX)
    app.include_router(sites.router, prefix=API_PREFIX)
    app.include_router(deployment.router, prefix=API_PREFIX)
    app.include_router(tokens.router, prefix=API_PREFIX)
    app.include_router(runs.router, prefix=API_PREFIX)
    app.include_router(checkpoints.router, prefix=API_PREFIX)
    app.include_router(workers.router, prefix=API_PREFIX)
    install_web(app, settings)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_input_errors(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app

"""GET /health: 200 when every configured service answers (database, broker, Redis when set), 503
naming the one that did not."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from fedvla.web import health as health_service
from fedvla.web.api.deps import EngineDep, SettingsDep
from fedvla.web.health import HealthReport

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthReport,
    summary="Database, broker and Redis reachability",
    responses={
        503: {"model": HealthReport, "description": "The database, the broker or Redis is down"}
    },
)
async def get_health(engine: EngineDep, settings: SettingsDep) -> JSONResponse:
    report = await run_in_threadpool(
        health_service.check, engine, settings.broker_url, settings.redis_url
    )
    return JSONResponse(report.model_dump(mode="json"), status_code=200 if report.ok else 503)

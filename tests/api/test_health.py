"""/health reports every configured service: Redis too, when FEDVLA_REDIS_URL is set."""

import redis
from fastapi.testclient import TestClient

from fedvla.core.config import Settings
from fedvla.web.main import create_app
from tests.conftest import REDIS_URL, _unavailable


def test_health_names_redis_when_it_is_configured(settings: Settings) -> None:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as error:
        _unavailable("Redis", error)
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    up = settings.model_copy(update={"redis_url": REDIS_URL})

    with TestClient(create_app(down)) as client:
        refused = client.get("/api/v1/health")
    with TestClient(create_app(up)) as client:
        answered = client.get("/api/v1/health")
    with TestClient(create_app(settings)) as client:
        unset = client.get("/api/v1/health")

    assert refused.status_code == 503
    assert refused.json()["ok"] is False
    assert refused.json()["redis"]["ok"] is False and refused.json()["redis"]["error"]
    assert refused.json()["broker"]["ok"] is True
    assert answered.status_code == 200
    assert answered.json()["redis"] == {"ok": True, "error": None}
    assert unset.status_code == 200 and unset.json()["redis"] is None

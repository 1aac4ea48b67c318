"""Can the server work: does every configured service answer (database, Celery broker, and Redis
when FEDVLA_REDIS_URL is set)."""

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis
from kombu import Connection
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.engine import Engine

BROKER_TIMEOUT_S = 3.0


class ComponentHealth(BaseModel):
    ok: bool
    error: str | None = Field(None, examples=[None])


class HealthReport(BaseModel):
    ok: bool = Field(examples=[True])
    database: ComponentHealth
    broker: ComponentHealth
    redis: ComponentHealth | None = Field(
        None, description="Live event fan-out; null when FEDVLA_REDIS_URL is not set."
    )


def check_database(engine: Engine) -> ComponentHealth:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        return ComponentHealth(ok=False, error=f"{type(error).__name__}: {error}")
    return ComponentHealth(ok=True)


def _connect_broker(broker_url: str) -> None:
    with Connection(broker_url, connect_timeout=BROKER_TIMEOUT_S) as connection:
        connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)


def check_broker(broker_url: str, timeout_s: float = BROKER_TIMEOUT_S) -> ComponentHealth:
    """Connects in a thread so that a broker that hangs costs at most ``timeout_s``."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broker-health")
    try:
        pool.submit(_connect_broker, broker_url).result(timeout=timeout_s)
    except FutureTimeout:
        return ComponentHealth(ok=False, error=f"no answer within {timeout_s:g} s")
    except Exception as error:
        return ComponentHealth(ok=False, error=f"{type(error).__name__}: {error}")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return ComponentHealth(ok=True)


def check_redis(redis_url: str, timeout_s: float = BROKER_TIMEOUT_S) -> ComponentHealth:
    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
    )
    try:
        client.ping()
    except redis.RedisError as error:
        return ComponentHealth(ok=False, error=f"{type(error).__name__}: {error}")
    finally:
        client.close()
    return ComponentHealth(ok=True)


def check(engine: Engine, broker_url: str, redis_url: str = "") -> HealthReport:
    """Every configured service; ``ok`` only when all of them answer."""
    database = check_database(engine)
    broker = check_broker(broker_url)
    cache = check_redis(redis_url) if redis_url else None
    return HealthReport(
        ok=database.ok and broker.ok and (cache is None or cache.ok),
        database=database,
        broker=broker,
        redis=cache,
    )

"""Settings, read from FEDVLA_* environment variables (and a .env file)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_KEY_LENGTH = 32
# Addresses that bind every interface.
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class Settings(BaseSettings):
    """Everything the app and the worker read from the environment.

    With no variables set, the system runs on the embedded default: a SQLite database and a
    SQLite-backed Celery broker under ``data_dir``, no Redis, no other server.
    """

    model_config = SettingsConfigDict(env_prefix="FEDVLA_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(Path("var"), description="Databases, checkpoints, generated assets.")
    database_url: str = Field("", description="SQLAlchemy URL; empty: SQLite in data_dir.")
    broker_url: str = Field("", description="Celery broker; empty: SQLite in data_dir.")
    redis_url: str = Field("", description="Redis for live event fan-out; empty: none.")
    secret_key: str = Field(
        "",
        description="Signs session cookies; empty: a random key generated on first start into "
        "data_dir/secret_key (mode 0600) and reused after. Required in production.",
    )
    gpu_queue: str = Field("gpu", description="Celery queue that federation runs go to.")
    max_request_bytes: int = Field(1_048_576, description="Largest request body accepted.")
    heartbeat_interval_s: float = Field(
        5.0, gt=0, description="How often a worker and its running federation send heartbeats."
    )
    lost_after_s: float = Field(
        60.0, gt=0, description="A running run without a heartbeat for this long failed."
    )
    resource_sample_interval_s: float = Field(
        5.0,
        ge=0,
        description="How often a worker samples its running federation's memory, CPU and GPU use "
        "(0: never).",
    )
    cancel_grace_s: float = Field(
        5.0, ge=0, description="After SIGTERM, seconds before a cancelled federation is killed."
    )
    node_wait_s: float = Field(
        300.0,
        gt=0,
        description="How long a deployment run waits for its sites' nodes to come online "
        "before it fails naming the missing sites.",
    )
    loader_workers: int = Field(
        -1,
        ge=-1,
        description="DataLoader worker processes per training client (fedvla.engine.data.loader "
        "reads FEDVLA_LOADER_WORKERS); -1: half the CPUs less one, at most 8; 0: decode inline.",
    )
    warm_start: bool = Field(
        True,
        description="The worker keeps a process with the engine imported and forks each "
        "federation from it; false: a fresh Python process per run.",
    )
    host: str = "127.0.0.1"
    port: int = 8080
    superlink_host: str = Field(
        "127.0.0.1",
        description="Interface the Flower SuperLink itself binds: loopback, or a private "
        "interface (docker compose: its service name). Its port serves the Control and "
        "ServerAppIo APIs too, so never a wildcard; sites reach the Fleet API through the front.",
    )
    superlink_port: int = Field(
        9093,
        ge=1,
        le=65535,
        description="The SuperLink's own HTTPS port (Fleet, Control and ServerAppIo APIs in "
        "flwr 1.42), for the coordinator's processes and the front only.",
    )
    fleet_host: str = Field(
        "127.0.0.1",
        description="Interface the SuperLink's public front (Caddy) binds for sites "
        "(0.0.0.0: every one); it forwards the Fleet API's routes only.",
    )
    fleet_port: int = Field(
        9092, ge=1, le=65535, description="Port of the public front that sites dial (HTTPS)."
    )
    superlink_front: bool = Field(
        True,
        description="fedvla superlink starts Caddy as the public front; false where another "
        "front forwards the Fleet API (docker compose's caddy service).",
    )
    superlink_public_address: str = Field(
        "",
        description="host:port SuperNodes dial, written into startup kits and the server "
        "certificate; empty: fleet_host:fleet_port.",
    )

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Self:
        if not self.database_url:
            self.database_url = self.embedded_database_url
        if not self.broker_url:
            self.broker_url = self.embedded_broker_url
        if self.database_url.startswith(("postgres://", "postgresql://")):
            # psycopg 3 is the driver we ship; SQLAlchemy defaults to psycopg2.
            rest = self.database_url.split("://", 1)[1]
            self.database_url = f"postgresql+psycopg://{rest}"
        if self.environment == "production" and len(self.secret_key) < MIN_SECRET_KEY_LENGTH:
            raise ValueError(
                f"FEDVLA_SECRET_KEY must be set in production ({MIN_SECRET_KEY_LENGTH} characters"
                " or more)"
            )
        if self.superlink_host in WILDCARD_HOSTS:
            raise ValueError(
                f"FEDVLA_SUPERLINK_HOST={self.superlink_host!r} would open the SuperLink's "
                "Control API to the network: bind it to loopback or a private interface, and "
                "let sites in through the front (FEDVLA_FLEET_HOST, FEDVLA_FLEET_PORT)"
            )
        if self.superlink_port == self.fleet_port:
            raise ValueError(
                f"FEDVLA_SUPERLINK_PORT and FEDVLA_FLEET_PORT are both {self.fleet_port}: the "
                "SuperLink and its public front need a port each"
            )
        return self

    @property
    def embedded_database_url(self) -> str:
        """The database when none is set: SQLite in data_dir."""
        return f"sqlite:///{self.data_dir / 'fedvla.db'}"

    @property
    def embedded_broker_url(self) -> str:
        """The broker when none is set: kombu's SQL transport on a SQLite file in data_dir."""
        return f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def superlink_address(self) -> str:
        """Where sites reach the SuperLink."""
        return self.superlink_public_address or f"{self.fleet_host}:{self.fleet_port}"

    @property
    def superlink_dir(self) -> Path:
        """The SuperLink's certificates, state database and logs."""
        return self.data_dir / "superlink"

    @property
    def secret_key_file(self) -> Path:
        """Where the generated session key lives when FEDVLA_SECRET_KEY is empty."""
        return self.data_dir / "secret_key"

    @property
    def checkpoint_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()

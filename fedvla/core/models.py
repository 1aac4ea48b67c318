"""The database tables, with the field sets a site's requests and responses share.

An experiment's settings are defined once, in fedvla.core.experiment_config, and stored in
``Experiment.config`` as one JSON document; the request and response models are in
fedvla.core.schemas.
"""

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Dialect
from sqlmodel import JSON, Field, SQLModel
from sqlmodel.main import SQLModelConfig

from fedvla.core.experiment_config import ExperimentConfig, Mode
from fedvla.core.names import MAX_NAME_LENGTH, Name

MAX_DESCRIPTION_LENGTH = 2000
MAX_RUN_NOTES_LENGTH = 5000


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored timestamp as aware UTC: SQLite hands back naive datetimes (every one we store is
    UTC), PostgreSQL aware ones in the session's time zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum(enum_cls: type[StrEnum]) -> sa.Enum:
    """Enums stored as their values in a VARCHAR: no native PostgreSQL type to migrate."""
    return sa.Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=20,
        values_callable=lambda members: [m.value for m in members],
    )


def _timestamp(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.DateTime(timezone=True), nullable=nullable)


class ValidatedJSON(sa.types.TypeDecorator[BaseModel]):
    """A pydantic model stored as JSON: validated on the way in and on the way out."""

    impl = sa.JSON
    cache_ok = True

    def __init__(self, model: type[BaseModel]) -> None:
        super().__init__()
        self.model = model

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else self.model.model_validate(value).model_dump(mode="json")

    def process_result_value(self, value: Any, dialect: Dialect) -> BaseModel | None:
        return None if value is None else self.model.model_validate(value)


class Role(StrEnum):
    admin = "admin"
    operator = "operator"
    viewer = "viewer"


class RobotType(StrEnum):
    so100 = "so100"
    so101 = "so101"
    other = "other"


class SiteStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    revoked = "revoked"


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)


# --------------------------------------------------------------------------- experiments


class ExperimentSite(SQLModel, table=True):
    """The sites that take part in a deployment-mode experiment."""

    experiment_id: int = Field(foreign_key="experiment.id", primary_key=True, ondelete="CASCADE")
    site_id: int = Field(foreign_key="site.id", primary_key=True, ondelete="CASCADE")


class Experiment(SQLModel, table=True):
    """An experiment: its name and description, and its settings as one validated document."""

    __table_args__ = {"sqlite_autoincrement": True}  # a deleted experiment's id is never reused

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=MAX_NAME_LENGTH, unique=True, index=True)
    description: str = Field(default="", max_length=MAX_DESCRIPTION_LENGTH)
    config: ExperimentConfig = Field(sa_type=ValidatedJSON(ExperimentConfig))
    mode: Mode = Field(
        sa_type=_enum(Mode), description="config.mode, as a column that queries filter on."
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


# --------------------------------------------------------------------------- sites


class SiteFeatures(SQLModel):
    """What a site declares about its LeRobot dataset."""

    model_config = SQLModelConfig(extra="forbid")

    state_dim: int = Field(ge=1, le=1024)
    action_dim: int = Field(ge=1, le=1024)
    state_names: list[str] = Field(default_factory=list)
    action_names: list[str] = Field(default_factory=list)
    camera_keys: list[str] = Field(default_factory=list)
    camera_resolutions: dict[str, list[Annotated[int, Field(ge=1, le=65_536)]]] = Field(
        default_factory=dict, description="Height and width in pixels, per camera."
    )
    fps: int = Field(ge=1, le=1000)
    episodes: int = Field(default=0, ge=0, le=2**31 - 1)
    frames: int = Field(default=0, ge=0, le=2**31 - 1)
    tasks: list[str] = Field(default_factory=list)


class SiteFields(SQLModel):
    name: Name
    organisation: str = Field(default="", max_length=200)
    contact: str = Field(default="", max_length=200)
    robot_type: RobotType = Field(default=RobotType.so100, sa_type=_enum(RobotType))
    dataset: str = Field(min_length=1, max_length=500, description="Hub repo id or local path.")
    hardware: str = Field(default="", max_length=500)
    public_key: str | None = Field(default=None, sa_type=sa.Text, description="PEM public key.")


class SiteBase(SiteFields):
    """A site with its declared features as a model (requests and responses)."""

    features: SiteFeatures


class Site(SiteFields, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True, index=True)
    features: dict[str, Any] = Field(sa_type=JSON)  # SiteFeatures.model_dump(mode="json")
    status: SiteStatus = Field(default=SiteStatus.pending, sa_type=_enum(SiteStatus))
    status_reason: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    approved_at: datetime | None = _timestamp()
    revoked_at: datetime | None = _timestamp()


class SiteAudit(SQLModel, table=True):
    """Who registered, approved, revoked or deleted which site, when, and why. Append-only: the
    rows outlive their site (``site_id`` becomes NULL, ``site_name`` still says which it was)."""

    id: int | None = Field(default=None, primary_key=True)
    site_id: int | None = Field(
        default=None, foreign_key="site.id", index=True, ondelete="SET NULL"
    )
    site_name: str = Field(default="", max_length=100, sa_column_kwargs={"server_default": ""})
    action: str = Field(max_length=20)
    actor: str = Field(max_length=100)
    reason: str = Field(default="", max_length=500)
    at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


# --------------------------------------------------------------------------- runs


def new_storage_key() -> str:
    return uuid.uuid4().hex


class Run(SQLModel, table=True):
    __table_args__ = {"sqlite_autoincrement": True}  # a deleted run's id is never reused

    id: int | None = Field(default=None, primary_key=True)
    storage_key: str = Field(
        default_factory=new_storage_key,
        max_length=40,
        unique=True,
        index=True,
        description=(
            "Names the run's folder under <data dir>/runs (fedvla.core.services.run_files)."
        ),
    )
    experiment_id: int = Field(foreign_key="experiment.id", index=True, ondelete="CASCADE")
    config: dict[str, Any] = Field(sa_type=JSON, description="FederationConfig frozen at launch.")
    status: RunStatus = Field(default=RunStatus.queued, sa_type=_enum(RunStatus), index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    started_at: datetime | None = _timestamp()
    finished_at: datetime | None = _timestamp()
    worker: str | None = Field(default=None, max_length=200)
    task_id: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_type=sa.Text)
    current_round: int = 0
    resumed_from_run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")
    resumed_from_round: int | None = None
    heartbeat_at: datetime | None = _timestamp()
    notes: str = Field(
        default="",
        sa_type=sa.Text,
        sa_column_kwargs={"server_default": ""},
        description="What people noted about the run (operators and admins edit it).",
    )


class RoundMetric(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("run_id", "round"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    round: int
    eval_loss: float | None = Field(default=None, description="The server's, on held-out data.")
    eval_action_mse: float | None = Field(
        default=None, description="The server's evaluation: action error in the data's units."
    )
    fed_eval_loss: float | None = Field(
        default=None,
        description="Federated evaluation: the clients' own held-out episodes, by samples.",
    )
    fed_eval_action_mse: float | None = None
    fed_eval_samples: int = 0
    train_loss: float | None = None
    duration_s: float = 0.0
    bytes_sent: int = Field(default=0, sa_type=sa.BigInteger)
    bytes_received: int = Field(default=0, sa_type=sa.BigInteger)
    clients_sampled: int = 0
    clients_succeeded: int = 0
    clients_failed: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class ClientMetric(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    round: int
    client: str = Field(max_length=100)
    site_id: int | None = Field(default=None, foreign_key="site.id", ondelete="SET NULL")
    ok: bool = True
    train_loss: float | None = None
    samples: int = 0
    episodes: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    bytes_sent: int = Field(default=0, sa_type=sa.BigInteger)
    bytes_received: int = Field(default=0, sa_type=sa.BigInteger)
    error: str | None = Field(default=None, sa_type=sa.Text)
    eval_loss: float | None = Field(
        default=None, description="Federated evaluation on the client's own held-out episodes."
    )
    eval_action_mse: float | None = None
    eval_samples: int = 0


class Checkpoint(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("run_id", "round"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    round: int
    path: str = Field(max_length=1000, description="The pretrained_model folder.")
    sha256: str = Field(max_length=64, description="Of model.safetensors.")
    size_bytes: int = Field(default=0, sa_type=sa.BigInteger)
    eval_loss: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class RunEvent(SQLModel, table=True):
    """A run's append-only log; ``id`` orders events and is the SSE event id."""

    __table_args__ = (sa.Index("ix_runevent_run_id_id", "run_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE")
    kind: str = Field(max_length=20, description="status | log | round | checkpoint | resources")
    message: str = Field(default="", sa_type=sa.Text)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


# --------------------------------------------------------------------------- workers


class WorkerNode(SQLModel, table=True):
    """A Celery worker that runs federations, as it registered itself."""

    __tablename__ = "worker"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True, index=True)
    host: str = Field(max_length=200)
    queue: str = Field(max_length=100)
    gpus: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    started_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    current_run_id: int | None = Field(default=None, foreign_key="run.id", ondelete="SET NULL")


# --------------------------------------------------------------------------- auth


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True, index=True)
    role: Role = Field(sa_type=_enum(Role))
    site_id: int | None = Field(default=None, foreign_key="site.id", ondelete="SET NULL")
    token_hash: str = Field(max_length=64, unique=True, index=True, description="sha256 hex.")
    prefix: str = Field(max_length=16, description="The token's first characters, for display.")
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    last_used_at: datetime | None = _timestamp()
    revoked: bool = False


class WebSession(SQLModel, table=True):
    """A dashboard sign-in. The signed cookie carries the session's key; the table holds only the
    key's hash, so signing out, revoking the token or expiry ends the session on the server."""

    key_hash: str = Field(primary_key=True, max_length=64, description="sha256 hex of the key.")
    token_id: int = Field(foreign_key="apitoken.id", index=True, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    expires_at: datetime = Field(sa_type=sa.DateTime(timezone=True))

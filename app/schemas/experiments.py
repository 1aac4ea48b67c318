"""Experiments as clients create, change and read them."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel.main import SQLModelConfig

from app.models import ExperimentBase, Mode, Strategy
from app.schemas.common import RowId, UtcDatetime
from worker.federation.config import DatasetRef, Partition

EXPERIMENT_EXAMPLE: dict[str, Any] = {
    "name": "so100-pick-fedavg",
    "description": "Pick-and-place, two simulated labs",
    "policy": "lerobot/smolvla_base",
    "strategy": "fedavg",
    "num_rounds": 5,
    "min_clients": 2,
    "local_steps": 50,
    "batch_size": 8,
    "learning_rate": 0.0001,
    "mode": "simulation",
    "partition": {
        "dataset": {"repo_id": "lerobot/svla_so100_pickplace"},
        "num_clients": 2,
        "scheme": "iid",
        "holdout_episodes": 4,
    },
}


class ExperimentCreate(ExperimentBase):
    """A new experiment; it must also be a valid FederationConfig, or it is refused (422)."""

    model_config = SQLModelConfig(
        extra="forbid", json_schema_extra={"examples": [EXPERIMENT_EXAMPLE]}
    )

    site_ids: list[RowId] = Field(
        default_factory=list, description="Deployment mode: the sites that take part."
    )


class ExperimentUpdate(BaseModel):
    """Fields to change; the result must still be a valid experiment."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"num_rounds": 10, "seed": 1}]}
    )

    name: str | None = None
    description: str | None = None
    policy: str | None = None
    strategy: Strategy | None = None
    proximal_mu: float | None = None
    server_learning_rate: float | None = None
    num_rounds: int | None = None
    fraction_train: float | None = None
    min_clients: int | None = None
    local_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    seed: int | None = None
    eval_every: int | None = None
    eval_batches: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int | None = None
    mode: Mode | None = None
    client_datasets: list[DatasetRef] | None = None
    partition: Partition | None = None
    eval_datasets: list[DatasetRef] | None = None
    normalization: str | None = None
    transport_dtype: str | None = None
    client_num_cpus: float | None = None
    client_num_gpus: float | None = None
    device: str | None = None
    site_ids: list[RowId] | None = None


class ExperimentPublic(ExperimentBase):
    id: int
    site_ids: list[int]
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ExperimentsPublic(BaseModel):
    data: list[ExperimentPublic]
    count: int = Field(description="All experiments the caller may see, not just this page.")

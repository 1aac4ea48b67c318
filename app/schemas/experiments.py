"""Experiments as clients create, change and read them."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo
from sqlmodel.main import SQLModelConfig

from app.core.names import Name
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


def _optional(name: str) -> Any:
    """The experiment field ``name`` with its bounds, defaulting to None (left as it is)."""
    return FieldInfo.merge_field_infos(
        ExperimentBase.model_fields[name], default=None, default_factory=None
    )


class ExperimentUpdate(BaseModel):
    """Fields to change; the result must still be a valid experiment."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"num_rounds": 10, "seed": 1}]}
    )

    name: Name | None = None  # the validator of Name applies to a given name, not to None
    description: str | None = _optional("description")
    policy: str | None = _optional("policy")
    strategy: Strategy | None = _optional("strategy")
    proximal_mu: float | None = _optional("proximal_mu")
    server_learning_rate: float | None = _optional("server_learning_rate")
    num_rounds: int | None = _optional("num_rounds")
    fraction_train: float | None = _optional("fraction_train")
    min_clients: int | None = _optional("min_clients")
    local_steps: int | None = _optional("local_steps")
    batch_size: int | None = _optional("batch_size")
    learning_rate: float | None = _optional("learning_rate")
    seed: int | None = _optional("seed")
    eval_every: int | None = _optional("eval_every")
    eval_batches: int | None = _optional("eval_batches")
    checkpoint_every: int | None = _optional("checkpoint_every")
    keep_checkpoints: int | None = _optional("keep_checkpoints")
    mode: Mode | None = _optional("mode")
    client_datasets: list[DatasetRef] | None = _optional("client_datasets")
    partition: Partition | None = _optional("partition")
    eval_datasets: list[DatasetRef] | None = _optional("eval_datasets")
    normalization: str | None = _optional("normalization")
    transport_dtype: str | None = _optional("transport_dtype")
    client_num_cpus: float | None = _optional("client_num_cpus")
    client_num_gpus: float | None = _optional("client_num_gpus")
    device: str | None = _optional("device")
    site_ids: list[RowId] | None = None


class ExperimentPublic(ExperimentBase):
    id: int
    site_ids: list[int]
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ExperimentsPublic(BaseModel):
    data: list[ExperimentPublic]
    count: int = Field(description="All experiments the caller may see, not just this page.")

"""Experiments as clients create, change and read them: their settings are FederationSettings'
fields, with the defaults and bounds defined there."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from fedvla.core.experiment_config import Evaluation, FederationSettings, evaluation_of
from fedvla.core.models import MAX_DESCRIPTION_LENGTH
from fedvla.core.names import Name
from fedvla.core.schemas.common import RowId, UtcDatetime, all_optional

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


class ExperimentBase(FederationSettings):
    """An experiment's name and description, with its settings."""

    name: Name = Field(examples=["so100-pick-fedavg"])
    description: str = Field(default="", max_length=MAX_DESCRIPTION_LENGTH)


class ExperimentCreate(ExperimentBase):
    """A new experiment; it must also be a valid FederationConfig, or it is refused (422)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXPERIMENT_EXAMPLE]})

    site_ids: list[RowId] = Field(
        default_factory=list, description="Deployment mode: the sites that take part."
    )


class ExperimentUpdate(all_optional(ExperimentCreate)):  # type: ignore[misc]  # a derived base
    """Fields to change (each of ExperimentCreate's, None: left as it is); the result must still
    be a valid experiment."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"num_rounds": 10, "seed": 1}]}
    )


class ExperimentPublic(ExperimentBase):
    id: int
    site_ids: list[int]
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @computed_field(description="What the experiment evaluates, or that evaluation is off.")  # type: ignore[prop-decorator]
    @property
    def evaluation(self) -> Evaluation:
        return evaluation_of(self)


class ExperimentsPublic(BaseModel):
    data: list[ExperimentPublic]
    count: int = Field(description="All experiments the caller may see, not just this page.")

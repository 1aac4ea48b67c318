"""Runs, their metrics, events and checkpoints, and the workers, as the API shows them."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from fedvla.core.experiment_config import Evaluation, evaluation_of_frozen
from fedvla.core.models import MAX_RUN_NOTES_LENGTH, RunStatus
from fedvla.core.schemas.common import MAX_ID, RowId, UtcDatetime


class ResumeFrom(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: RowId = Field(description="An earlier run of the same experiment.", examples=[3])
    round: int = Field(
        ge=0, le=MAX_ID, description="A round of that run that has a checkpoint.", examples=[2]
    )


class RunLaunchFromExperiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resume_from: ResumeFrom | None = Field(
        None, description="Start from this checkpoint; rounds continue its numbering."
    )


class RunLaunch(RunLaunchFromExperiment):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"experiment_id": 1},
                {"experiment_id": 1, "resume_from": {"run_id": 3, "round": 2}},
            ]
        },
    )

    experiment_id: RowId = Field(examples=[1])


class RunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    experiment_id: int
    status: RunStatus
    config: dict[str, Any] = Field(description="The FederationConfig frozen at launch.")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    worker: str | None
    error: str | None
    current_round: int
    resumed_from_run_id: int | None
    resumed_from_round: int | None
    heartbeat_at: UtcDatetime | None
    notes: str = Field(description="What operators and admins noted about the run.")

    @computed_field(  # type: ignore[prop-decorator]
        description="What the run evaluates, or that evaluation is off (None: a config that "
        "is not a federation's)."
    )
    @property
    def evaluation(self) -> Evaluation | None:
        return evaluation_of_frozen(self.config)


class RunListItem(RunPublic):
    """A run in the runs list, with the columns it sorts by."""

    experiment_name: str
    duration_s: float | None = Field(
        description="Seconds from start to finish (to now while running); null before it starts."
    )
    final_loss: float | None = Field(
        description="The last trained round's server eval loss, else its mean client train loss."
    )
    final_loss_source: Literal["eval", "train"] | None = Field(
        description="Which loss final_loss is; null before a round finished."
    )


class RunsPublic(BaseModel):
    data: list[RunListItem]
    count: int


class RunUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"notes": "lr 1e-4 diverged at round 3"}]}
    )

    notes: str = Field(max_length=MAX_RUN_NOTES_LENGTH, description="Replaces the run's notes.")


class RoundMetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    round: int
    eval_loss: float | None = Field(description="The server's, on its held-out data.")
    eval_action_mse: float | None = Field(
        description="The server's evaluation: action error in the dataset's units."
    )
    fed_eval_loss: float | None = Field(
        description="Federated evaluation: the clients' losses on their own held-out episodes, "
        "averaged by samples."
    )
    fed_eval_action_mse: float | None
    fed_eval_samples: int
    train_loss: float | None
    duration_s: float
    bytes_sent: int
    bytes_received: int
    clients_sampled: int
    clients_succeeded: int
    clients_failed: int
    created_at: UtcDatetime


class RoundMetricsPublic(BaseModel):
    data: list[RoundMetricPublic]
    count: int


class ResourceSamplePublic(BaseModel):
    """The federation's process tree at one moment, as its worker sampled it."""

    at: UtcDatetime
    memory_bytes: int = Field(
        description="Memory of the federation's processes together: their proportional set size "
        "(shared pages split among the processes sharing them), or summed RSS where PSS cannot "
        "be read."
    )
    cpu_percent: float | None = Field(
        None, description="CPU use of those processes (100 = one core); absent on the first sample."
    )
    processes: int = Field(description="How many processes the federation had.")
    gpu_memory_bytes: int | None = Field(
        None, description="GPU memory its processes held; absent where no GPU could be read."
    )
    gpu_utilization_percent: float | None = Field(
        None, description="Mean utilisation of the GPUs it used; absent where unknown."
    )


class ResourceSamplesPublic(BaseModel):
    data: list[ResourceSamplePublic]
    count: int
    interval_s: float = Field(description="The worker's sampling interval (0: not sampled).")


class ClientMetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    round: int
    client: str
    site_id: int | None
    ok: bool
    train_loss: float | None
    samples: int
    episodes: int
    seconds: float
    load_seconds: float
    bytes_sent: int
    bytes_received: int
    error: str | None
    eval_loss: float | None = Field(
        description="Federated evaluation on this client's own held-out episodes."
    )
    eval_action_mse: float | None
    eval_samples: int


class ClientMetricsPublic(BaseModel):
    data: list[ClientMetricPublic]
    count: int


class RunEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Increasing; the SSE event id. Page on with ?after_id=<last id>.")
    run_id: int
    kind: str = Field(examples=["round"], description="status | log | round | checkpoint")
    message: str
    data: dict[str, Any]
    created_at: UtcDatetime


class RunEventsPublic(BaseModel):
    data: list[RunEventPublic]
    next_after_id: int = Field(description="Pass as after_id for the next page.")
    finished: bool = Field(description="The run is final and no events follow this page.")


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    run_id: int
    round: int
    sha256: str = Field(description="Of model.safetensors.")
    size_bytes: int
    eval_loss: float | None
    created_at: UtcDatetime


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    host: str
    queue: str
    gpus: list[dict[str, Any]] = Field(description="name, memory_bytes per GPU; empty: CPU only.")
    started_at: UtcDatetime
    heartbeat_at: UtcDatetime
    online: bool = Field(description="A heartbeat arrived within FEDVLA_LOST_AFTER_S.")
    current_run_id: int | None


class WorkersPublic(BaseModel):
    data: list[WorkerPublic]
    count: int

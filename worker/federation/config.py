"""The federation's configuration: what the engine needs to run one federation.

This is the contract between the web app (which freezes an experiment into a run) and the
engine (which runs it). It imports nothing heavy, so the app can validate with it.
"""

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

EpisodeIndex = Annotated[int, Field(ge=0, le=2**31 - 1)]

TINY_POLICY = "tiny"
"""Policy source that names the built-in tiny SmolVLA, generated offline into the data dir."""


class DatasetRef(BaseModel):
    """A LeRobot dataset: a hub repo id, optionally read from a local root folder."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(
        ..., min_length=1, max_length=200, examples=["lerobot/svla_so100_pickplace"]
    )
    root: str | None = Field(None, description="Local folder of the dataset; None: the HF cache.")
    episodes: list[EpisodeIndex] | None = Field(None, description="Only these episodes; None: all.")


class Partition(BaseModel):
    """Simulated clients made by splitting one dataset by episode."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetRef
    num_clients: int = Field(..., ge=1, le=64)
    scheme: Literal["iid", "task"] = Field(
        "iid", description="iid: episodes dealt at random; task: each client gets whole tasks."
    )
    holdout_episodes: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="Episodes kept back from every client for the server's evaluation.",
    )


class ResumePoint(BaseModel):
    """Where a resumed run starts: a checkpoint written by an earlier run."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_dir: str = Field(..., description="The round folder holding pretrained_model/.")
    round: int = Field(..., ge=0)


class FederationConfig(BaseModel):
    """One federation, frozen. Field names mirror the Experiment table and the flwr app config."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(
        "lerobot/smolvla_base",
        description="Hub id (from the local HF cache), a local pretrained_model folder, or 'tiny'.",
    )
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    proximal_mu: float = Field(0.0, ge=0.0, description="FedProx's mu.")
    server_learning_rate: float = Field(0.01, gt=0.0, description="FedAdam's eta.")
    num_rounds: int = Field(3, ge=1, le=10_000)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    min_clients: int = Field(2, ge=1)
    local_steps: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(1e-4, gt=0.0)
    seed: int = 0
    eval_every: int = Field(1, ge=0, description="Server evaluation cadence in rounds; 0: never.")
    eval_batches: int = Field(4, ge=1, description="Batches of held-out data per evaluation.")
    checkpoint_every: int = Field(1, ge=0, description="Checkpoint cadence in rounds; 0: end only.")
    keep_checkpoints: int = Field(3, ge=1, description="Last N kept, plus the best by eval loss.")
    mode: Literal["simulation", "deployment"] = "simulation"
    client_datasets: list[DatasetRef] = Field(
        default_factory=list, description="Simulation: one whole dataset per virtual client."
    )
    partition: Partition | None = Field(None, description="Simulation: split one dataset.")
    eval_datasets: list[DatasetRef] = Field(
        default_factory=list, description="Held-out datasets the server evaluates on."
    )
    normalization: Literal["local", "federated"] = Field(
        "local",
        description="local: each client normalises with its dataset's stats; "
        "federated: the server merges every client's stats.",
    )
    transport_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    client_num_cpus: float = Field(1.0, gt=0.0)
    client_num_gpus: float = Field(0.0, ge=0.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    site_ids: list[int] = Field(default_factory=list, description="Deployment: the sites.")
    resume_from: ResumePoint | None = None

    @model_validator(mode="after")
    def _check_clients(self) -> Self:
        if self.mode == "simulation":
            if self.client_datasets and self.partition:
                raise ValueError("give either client_datasets or partition, not both")
            if not self.client_datasets and not self.partition:
                raise ValueError("simulation needs client_datasets or a partition")
            if self.num_clients < self.min_clients:
                raise ValueError(
                    f"min_clients ({self.min_clients}) exceeds the {self.num_clients} clients"
                )
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise ValueError("strategy fedprox needs proximal_mu > 0")
        return self

    @property
    def num_clients(self) -> int:
        if self.mode == "deployment":
            return len(self.site_ids)
        if self.partition is not None:
            return self.partition.num_clients
        return len(self.client_datasets)

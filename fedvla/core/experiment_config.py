"""What one experiment is: every setting of a federation, with its default and bounds, once.

The web app derives from these models its table (``Experiment.config`` holds an
``ExperimentConfig``), its request and response schemas, and its form's fields, defaults, bounds
and choices; the engine runs a ``FederationConfig`` and reads and writes it as Flower's run
config (fedvla.engine.federation.run_config). The module imports nothing but pydantic, so both sides
import it without importing each other.
"""

from enum import Enum, StrEnum
from typing import Annotated, Any, Literal, Self, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_INT32 = 2**31 - 1
EpisodeIndex = Annotated[int, Field(ge=0, le=MAX_INT32)]

TINY_POLICY = "tiny"
"""Policy source that names the built-in tiny SmolVLA, generated offline into the data dir."""


class Strategy(StrEnum):
    fedavg = "fedavg"
    fedprox = "fedprox"
    fedadam = "fedadam"
    fedavgm = "fedavgm"


class Mode(StrEnum):
    simulation = "simulation"
    deployment = "deployment"


class DatasetRef(BaseModel):
    """A LeRobot dataset: a hub repo id, optionally read from a local root folder."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(
        ..., min_length=1, max_length=200, examples=["lerobot/svla_so100_pickplace"]
    )
    root: str | None = Field(None, description="Local folder of the dataset; None: the HF cache.")
    episodes: list[EpisodeIndex] | None = Field(None, description="Only these episodes; None: all.")


DEFAULT_SERVER_HOLDOUT = 1
"""Episodes a partition keeps back for the server's evaluation unless the experiment says."""
DEFAULT_CLIENT_HOLDOUT = 0.1
"""Fraction of each client's episodes it keeps back for federated evaluation by default."""


class Partition(BaseModel):
    """Simulated clients made by splitting one dataset by episode."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetRef
    num_clients: int = Field(..., ge=1, le=64)
    scheme: Literal["iid", "task"] = Field(
        "iid", description="iid: episodes dealt at random; task: each client gets whole tasks."
    )
    holdout_episodes: int = Field(
        DEFAULT_SERVER_HOLDOUT,
        ge=0,
        le=MAX_INT32,
        description="Episodes of the dataset kept back from every client for the server's "
        "evaluation (default 1, so every partitioned experiment is evaluated on the server; "
        "0: none, the server evaluates only on eval_datasets).",
    )


class ResumePoint(BaseModel):
    """Where a resumed run starts: a checkpoint written by an earlier run."""

    model_config = ConfigDict(extra="forbid")

    checkpoint_dir: str = Field(..., description="The round folder holding pretrained_model/.")
    round: int = Field(..., ge=0)


class FederationSettings(BaseModel):
    """Every setting an experiment defines, with its default and bounds, and no rule that spans
    fields: request schemas extend it (with a name and sites), and the rules that span fields
    (ExperimentConfig's) answer with the field they are about."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(
        "lerobot/smolvla_base",
        min_length=1,
        max_length=500,
        description="Hub id from the local HF cache, a local pretrained_model folder, or 'tiny'.",
    )
    strategy: Strategy = Strategy.fedavg
    proximal_mu: float = Field(0.0, ge=0.0, le=1e6, description="FedProx's mu.")
    server_learning_rate: float = Field(0.01, gt=0.0, le=1e3, description="FedAdam's eta.")
    server_momentum: float = Field(
        0.9,
        ge=0.0,
        le=0.999,
        description="FedAvgM's server momentum on the averaged update (applied at server_step).",
    )
    server_step: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="FedAvgM's server learning rate: the weights move this many times the "
        "averaged update (with its momentum); 1: the average itself. Above 1 it lengthens the "
        "federation's step, shorter than centralized training's at the same samples per round.",
    )
    num_rounds: int = Field(3, ge=1, le=10_000)
    fraction_train: float = Field(1.0, gt=0.0, le=1.0)
    min_clients: int = Field(2, ge=1, le=10_000)
    local_steps: int = Field(10, ge=1, le=10_000_000)
    batch_size: int = Field(8, ge=1, le=65_536)
    learning_rate: float = Field(
        1e-4, gt=0.0, le=1e3, description="The clients' peak learning rate (AdamW)."
    )
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine",
        description="cosine: lerobot's SmolVLA preset, a linear warmup then a cosine decay to "
        "decay_learning_rate, over the federation's global steps (num_rounds x local_steps; "
        "shortened in proportion when they are fewer than decay_steps); constant: "
        "learning_rate throughout.",
    )
    warmup_steps: int = Field(
        1000, ge=0, le=10_000_000, description="Cosine schedule: warmup steps (lerobot's preset)."
    )
    decay_steps: int = Field(
        30_000, ge=1, le=100_000_000, description="Cosine schedule: decay steps (lerobot's preset)."
    )
    decay_learning_rate: float = Field(
        2.5e-6, gt=0.0, le=1e3, description="Cosine schedule: the final learning rate."
    )
    optimizer_state: Literal["fresh", "kept"] = Field(
        "fresh",
        description="fresh: each client starts a new AdamW every round (FedAvg's usual local "
        "solver); kept: each client keeps its AdamW moments and step count from its previous "
        "round of the run (in its client process in simulation, in the site trainer in "
        "deployment; a new or resumed run starts fresh), so its rounds continue one "
        "optimisation instead of restarting Adam's first steps. kept holds two copies of the "
        "trainable weights per client in the process that serves it.",
    )
    seed: int = Field(0, ge=0, le=MAX_INT32)
    eval_every: int = Field(
        1,
        ge=0,
        le=10_000,
        description="Evaluation cadence in rounds, the server's and the clients' (and always "
        "after the last round); 0: never (evaluation off).",
    )
    client_holdout_fraction: float = Field(
        DEFAULT_CLIENT_HOLDOUT,
        ge=0.0,
        lt=1.0,
        description="Fraction of each client's (or site's) episodes it keeps back for federated "
        "evaluation: rounded up, at least one episode when the client has 2 or more, never all; "
        "a client with one episode trains on it and evaluates nothing. Held-out episodes never "
        "reach training nor the normalisation statistics. 0: no federated evaluation.",
    )
    eval_batches: int = Field(
        4, ge=1, le=1_000_000, description="Batches of held-out data per evaluation."
    )
    checkpoint_every: int = Field(
        1, ge=0, le=10_000, description="Checkpoint cadence in rounds; 0: end only."
    )
    keep_checkpoints: int = Field(
        3,
        ge=1,
        le=10_000,
        description="Last N kept, plus the best by eval loss (the server's, or the federated "
        "one where the server has no held-out data; evaluation off: the last N only).",
    )
    mode: Mode = Mode.simulation
    client_datasets: list[DatasetRef] = Field(
        default_factory=list, description="Simulation: one whole dataset per virtual client."
    )
    partition: Partition | None = Field(None, description="Simulation: split one dataset.")
    eval_datasets: list[DatasetRef] = Field(
        default_factory=list, description="Held-out datasets the server evaluates on."
    )
    normalization: Literal["local", "federated"] = Field(
        "federated",
        description="Statistics are always those of each client's own training frames (held-out "
        "episodes excluded). federated: every client trains with their merge by frame count, "
        "the statistics the server evaluates and checkpoints with; local: each client trains "
        "with its own.",
    )
    transport_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    client_num_cpus: float = Field(1.0, gt=0.0, le=1024)
    client_num_gpus: float = Field(0.0, ge=0.0, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ExperimentConfig(FederationSettings):
    """An experiment's settings that can run together; what the Experiment table stores."""

    @model_validator(mode="after")
    def _check_clients(self) -> Self:
        if self.mode == Mode.simulation:
            if self.client_datasets and self.partition:
                raise ValueError("give either client_datasets or partition, not both")
            if not self.client_datasets and not self.partition:
                raise ValueError("simulation needs client_datasets or a partition")
            simulated = self.partition.num_clients if self.partition else len(self.client_datasets)
            if simulated < self.min_clients:
                raise ValueError(
                    f"min_clients ({self.min_clients}) exceeds the {simulated} clients"
                )
        if self.strategy == Strategy.fedprox and self.proximal_mu <= 0:
            raise ValueError("strategy fedprox needs proximal_mu > 0")
        return self


class Evaluation(BaseModel):
    """Which evaluations an experiment runs, as the API and the pages tell it."""

    enabled: bool = Field(description="False: eval_every is 0, or there is nothing to evaluate.")
    every: int = Field(description="Rounds between evaluations (and after the last); 0: never.")
    server: bool = Field(
        description="The server evaluates the aggregated policy on held-out data: the "
        "partition's held-out episodes and eval_datasets."
    )
    federated: bool = Field(
        description="Each client evaluates the aggregated policy on its own held-out episodes "
        "(client_holdout_fraction of them)."
    )
    best_checkpoint_by: Literal["server eval loss", "federated eval loss", "last round"] = Field(
        description="What 'best' means among the kept checkpoints."
    )
    summary: str = Field(description="One sentence for people.")


def evaluation_of(config: FederationSettings) -> Evaluation:
    """What the experiment evaluates, from its settings alone (before any data is read)."""
    every = config.eval_every
    held = config.partition.holdout_episodes if config.partition is not None else 0
    server = every > 0 and (held > 0 or bool(config.eval_datasets))
    federated = every > 0 and config.client_holdout_fraction > 0
    if not (server or federated):
        reason = "eval_every is 0" if every == 0 else "nothing is held out"
        return Evaluation(
            enabled=False,
            every=every,
            server=False,
            federated=False,
            best_checkpoint_by="last round",
            summary=f"Evaluation is off ({reason}): no eval loss is measured and the "
            "checkpoints kept are the last ones.",
        )
    parts = []
    if server:
        parts.append("on the server's held-out data")
    if federated:
        parts.append(
            f"at each client on its own held-out episodes ({config.client_holdout_fraction:g} "
            "of them, at least one where it has 2 or more)"
        )
    cadence = "every round" if every == 1 else f"every {every} rounds and after the last"
    return Evaluation(
        enabled=True,
        every=every,
        server=server,
        federated=federated,
        best_checkpoint_by="server eval loss" if server else "federated eval loss",
        summary=f"Evaluated {cadence}, " + " and ".join(parts) + ".",
    )


def evaluation_of_frozen(config: dict[str, Any]) -> Evaluation | None:
    """What a run evaluates, from the FederationConfig it froze at launch; None: the document
    is not a federation's (a row written by hand)."""
    from pydantic import ValidationError

    try:
        return evaluation_of(FederationConfig.model_validate(config))
    except ValidationError:
        return None


class FederationConfig(ExperimentConfig):
    """One federation, frozen: the experiment's settings, its sites and where it resumes."""

    site_ids: list[int] = Field(default_factory=list, description="Deployment: the sites.")
    resume_from: ResumePoint | None = None

    @property
    def num_clients(self) -> int:
        if self.mode == Mode.deployment:
            return len(self.site_ids)
        if self.partition is not None:
            return self.partition.num_clients
        return len(self.client_datasets)


def choices_of(annotation: Any) -> list[str] | None:
    """The values a field of this type may take, if it names them (a Literal or an Enum)."""
    if get_origin(annotation) is Literal:
        return [str(value) for value in get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return None


def scalar_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields that hold one number, string or choice (not a list, nor a model)."""
    return tuple(
        name
        for name, field in model.model_fields.items()
        if choices_of(field.annotation) is not None
        or (
            isinstance(field.annotation, type)
            and get_origin(field.annotation) is None
            and issubclass(field.annotation, str | int | float | bool)
        )
    )

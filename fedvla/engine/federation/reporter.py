"""What the engine tells the outside world as a federation runs.

The engine calls a Reporter; the Celery worker's implementation writes the database, the
standalone one writes JSON lines.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ClientReport:
    client: str
    """The client's label: its site's name in deployment (the node config's "site-label", else
    "node-<node id>"), its partition's ("client-0") in simulation."""
    site_id: int | None
    ok: bool
    train_loss: float | None = None
    samples: int = 0
    episodes: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    """Building the policy (first message in a process) plus assigning the received weights."""
    bytes_sent: int = 0
    """From the client to the server."""
    bytes_received: int = 0
    error: str | None = None
    skipped_frames: int = 0
    """Unreadable frames (a corrupt video frame) skipped this round instead of failing."""
    eval_loss: float | None = None
    """Federated evaluation: the aggregated policy on this client's own held-out episodes."""
    eval_action_mse: float | None = None
    """The same evaluation's action error, in the dataset's units."""
    eval_samples: int = 0


@dataclass(frozen=True)
class ClientEval:
    """One client's federated evaluation (or, as "federated", their average by samples)."""

    client: str
    site_id: int | None
    eval_loss: float
    action_mse: float
    samples: int


@dataclass(frozen=True)
class RoundReport:
    round: int
    """0 is the evaluation of the starting policy, before any training."""
    train_loss: float | None
    eval_loss: float | None
    """The server's evaluation on its held-out data (None: not evaluated this round)."""
    duration_s: float
    bytes_sent: int
    """From the server to the clients, all clients together."""
    bytes_received: int
    clients_sampled: int
    clients_succeeded: int
    clients_failed: int
    clients: list[ClientReport] = field(default_factory=list)
    eval_action_mse: float | None = None
    """The server's evaluation: action error in the dataset's units."""
    fed_eval_loss: float | None = None
    """Federated evaluation: the clients' losses on their own held-out episodes, averaged by
    samples (None: not evaluated this round)."""
    fed_eval_action_mse: float | None = None
    fed_eval_samples: int = 0


@dataclass(frozen=True)
class CheckpointReport:
    round: int
    path: str
    """The pretrained_model folder."""
    sha256: str
    """Of model.safetensors."""
    size_bytes: int
    eval_loss: float | None


class Reporter(Protocol):
    def log(self, message: str) -> None: ...

    def round_finished(self, report: RoundReport) -> None: ...

    def checkpoint_saved(self, report: CheckpointReport) -> None: ...

    def checkpoint_removed(self, round: int) -> None: ...


class JsonLinesReporter:
    """The standalone reporter: one JSON object per line, to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, kind: str, payload: dict[str, object]) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"kind": kind, **payload}) + "\n")

    def log(self, message: str) -> None:
        self._write("log", {"message": message})

    def round_finished(self, report: RoundReport) -> None:
        self._write("round", asdict(report))

    def checkpoint_saved(self, report: CheckpointReport) -> None:
        self._write("checkpoint", asdict(report))

    def checkpoint_removed(self, round: int) -> None:
        self._write("checkpoint_removed", {"round": round})

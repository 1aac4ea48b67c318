"""A worker announces itself (host, queue, GPUs) and keeps sending heartbeats.

The heartbeat thread also runs the reaper, so any live worker fails the runs of a dead one.
"""

import logging
import socket
import threading
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.services import runs, workers
from fedvla.core.services.events import EventPublisher

log = logging.getLogger(__name__)


def detect_gpus() -> list[dict[str, Any]]:
    """The CUDA devices this process sees, with name and memory; empty on a CPU-only machine."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the worker
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "memory_bytes": props.total_memory})
    return gpus


def default_worker_name(queue: str) -> str:
    return f"{queue}@{socket.gethostname()}"


def register_worker(engine: Engine, settings: Settings, name: str) -> None:
    with Session(engine) as session:
        workers.register(
            session,
            name=name,
            host=socket.gethostname(),
            queue=settings.gpu_queue,
            gpus=detect_gpus(),
        )


class HeartbeatThread(threading.Thread):
    """Every ``heartbeat_interval_s``: stamp this worker's row, then fail runs lost elsewhere."""

    def __init__(self, engine: Engine, settings: Settings, name: str) -> None:
        super().__init__(name="fedvla-heartbeat", daemon=True)
        self.engine = engine
        self.settings = settings
        self.worker_name = name
        self.publisher = EventPublisher(settings.redis_url)
        self._stop_event = threading.Event()

    def beat(self) -> list[int]:
        with Session(self.engine) as session:
            workers.heartbeat(session, self.worker_name)
            reaped = runs.reap_lost_runs(session, self.publisher, self.settings.lost_after_s)
        for run_id in reaped:
            log.warning("run %s ended: its worker stopped sending heartbeats", run_id)
        return reaped

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.beat()
            except Exception:  # a database hiccup must not end the heartbeats
                log.exception("heartbeat failed")
            self._stop_event.wait(self.settings.heartbeat_interval_s)

    def stop(self) -> None:
        self._stop_event.set()

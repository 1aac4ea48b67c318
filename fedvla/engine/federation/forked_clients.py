"""Flower's simulation with client processes forked from the federation process, not Ray actors.

Ray starts a fresh interpreter for every actor, which imports torch, lerobot and Flower again:
with Ray's own start that was most of a tiny run's 20-25 s launch on 2 CPUs. Forked from the
federation process (itself forked from the worker's warm process), a client process has all of
that already and starts in milliseconds. Like Ray's actors, the processes live for the whole run
and each serves whichever virtual client it is handed, so the ClientApp's per-process cache works
the same; they are children in the federation's process group, so a cancel's killpg ends them.

Flower 1.42 builds its simulation backend in `vce_api.start_vce` as
`from .backend.raybackend import RayBackend; RayBackend(backend_config)`, with no way to name
another; `flower_uses(pool)` puts a backend over this pool in that name for the duration of one
`run_simulation` call, in this process only.
"""

import contextlib
import logging
import multiprocessing
import os
import queue
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import PARTITION_ID_KEY
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

log = logging.getLogger(__name__)

TAKE_TIMEOUT_S = 1.0
"""How often a caller waiting for an idle process looks whether any is still alive."""
STOP_GRACE_S = 5.0


class ClientProcessDied(RuntimeError):
    """A client process ended while it held a message (killed, or crashed in native code)."""


@dataclass(frozen=True)
class Placement:
    """How many client processes, the threads each may use, and the GPUs each sees."""

    processes: int
    threads: int
    visible_gpus: list[str]
    """CUDA_VISIBLE_DEVICES of each process, as Ray would set it for an actor."""


def gpu_ids() -> list[str]:
    """The GPUs this process may use, found without initialising CUDA (forks must follow)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    found = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(found.iterdir())))] if found.is_dir() else []


def placement(num_clients: int, num_cpus: float, num_gpus: float) -> Placement:
    """As many processes as Ray would start actors on this machine, but no more than clients."""
    capacity = int((os.cpu_count() or 1) / num_cpus)
    gpus = gpu_ids()
    if num_gpus > 0:
        capacity = min(capacity, int(len(gpus) / num_gpus))
    if capacity < 1:
        raise ValueError(
            f"no client fits this machine: each asks for {num_cpus} CPUs and {num_gpus} GPUs, "
            f"it has {os.cpu_count()} CPUs and {len(gpus)} GPUs"
        )
    processes = min(capacity, num_clients)
    visible = [
        gpus[int(i * num_gpus) % len(gpus)] if num_gpus > 0 else "" for i in range(processes)
    ]
    return Placement(processes, max(1, int(num_cpus)), visible)


def _serve(
    app: ClientApp,
    inbox: Connection,
    threads: int,
    visible_gpus: str,
    report: Callable[[], Any] | None = None,
) -> None:
    """A client process: run each (message, context) through the ClientApp, send the reply
    (with what ``report`` says after it, if given)."""
    import torch

    os.environ["CUDA_VISIBLE_DEVICES"] = visible_gpus
    torch.set_num_threads(threads)
    while True:
        try:
            job = inbox.recv()
        except EOFError:
            return
        if job is None:
            return
        message, context = job
        try:
            reply: tuple[str, Any, Any] = ("ok", app(message=message, context=context), context)
        except Exception as error:  # reported to Flower as the ClientApp's failure
            reply = ("error", f"{type(error).__name__}: {error}", None)
        inbox.send((*reply, report() if report is not None else None))


class _Worker:
    def __init__(self, process: multiprocessing.process.BaseProcess, pipe: Connection) -> None:
        self.process = process
        self.pipe = pipe


class ForkedClientPool:
    """Client processes forked now, before the engine starts threads or touches CUDA."""

    def __init__(
        self, app: ClientApp, where: Placement, report: Callable[[], Any] | None = None
    ) -> None:
        context = multiprocessing.get_context("fork")
        self.last_report: Any = None
        """What the process that ran the last message reported after it (see ``report``)."""
        self.workers: list[_Worker] = []
        for index in range(where.processes):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve,
                args=(app, theirs, where.threads, where.visible_gpus[index], report),
                name=f"fedvla-client-{index}",
            )
            with warnings.catch_warnings():
                # Python warns on fork with threads running; this process has only its parent
                # watch and reporter threads, and a client process uses neither.
                warnings.filterwarnings("ignore", "This process .* is multi-threaded")
                process.start()
            theirs.close()
            self.workers.append(_Worker(process, ours))
        self.idle: queue.Queue[_Worker] = queue.Queue()
        for worker in self.workers:
            self.idle.put(worker)

    @property
    def size(self) -> int:
        return len(self.workers)

    def has_idle(self) -> bool:
        return not self.idle.empty()

    def run(self, message: Message, context: Context) -> tuple[Message, Context]:
        worker = self._take()
        try:
            worker.pipe.send((message, context))
            status, reply, updated, self.last_report = worker.pipe.recv()
        except (EOFError, OSError) as error:
            worker.process.join(timeout=1)
            raise ClientProcessDied(
                f"client process {worker.process.pid} ended (exit code {worker.process.exitcode})"
            ) from error
        self.idle.put(worker)
        if status != "ok":
            raise ClientAppException(reply)
        return reply, updated

    def _take(self) -> _Worker:
        while True:
            try:
                return self.idle.get(timeout=TAKE_TIMEOUT_S)
            except queue.Empty:
                if not any(worker.process.is_alive() for worker in self.workers):
                    raise ClientProcessDied("every client process has ended") from None

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.pipe.send(None)
            worker.pipe.close()
        for worker in self.workers:
            worker.process.join(timeout=STOP_GRACE_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


class ForkedBackend(Backend):
    """Flower's Backend interface over a ForkedClientPool (what RayBackend is over actors)."""

    def __init__(self, pool: ForkedClientPool, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        self.pool = pool

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """The processes already run the ClientApp they were forked with."""

    @property
    def num_workers(self) -> int:
        return self.pool.size

    def is_worker_idle(self) -> bool:
        return self.pool.has_idle()

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        log.debug("client %s: message to a forked process", context.node_config[PARTITION_ID_KEY])
        return self.pool.run(message, context)

    def terminate(self) -> None:
        self.pool.close()


@contextlib.contextmanager
def flower_uses(pool: ForkedClientPool) -> Iterator[None]:
    """Within the block, Flower's simulation runs its ClientApps on ``pool``."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    def build(config: BackendConfig) -> Backend:
        return ForkedBackend(pool, config)

    original = raybackend.RayBackend
    raybackend.RayBackend = build  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        raybackend.RayBackend = original  # type: ignore[misc]

"""The worker's warm process: the engine imported once, each run's federation forked from it.

Importing torch, lerobot and Flower took most of a run's start on 2 CPUs. With
``FEDVLA_WARM_START`` (the default) the worker starts the standard library's fork server with
those modules preloaded, and each federation process is forked from it in milliseconds. The warm
process never starts Ray or touches CUDA, so every fork begins clean; the federation child leads
its own session (one killpg stops it and its client processes), and when the worker dies the
fork server sees its pipe close and exits, which the child's parent watch turns into the end of
its process group.
"""

import logging
import multiprocessing
import threading
import time
from multiprocessing.context import ForkServerContext

log = logging.getLogger(__name__)

PRELOAD = ["fedvla.orchestration.warm_imports"]
READY_MESSAGE = "warm federation process ready"


def context() -> ForkServerContext:
    """The fork server context, preloading PRELOAD (the one fork server of this process)."""
    forkserver = multiprocessing.get_context("forkserver")
    assert isinstance(forkserver, ForkServerContext)
    forkserver.set_forkserver_preload(PRELOAD)
    return forkserver


def _nothing() -> None:
    """A first child: it exists once the fork server has imported PRELOAD."""


_ready = threading.Event()
_start_lock = threading.Lock()
_started: list[threading.Thread] = []
failure: list[BaseException] = []
"""Why the warm process could not start, if it could not: federations then start cold."""


def warm_up() -> float:
    """Starts the warm process and waits until it has imported everything; returns seconds."""
    started = time.monotonic()
    probe = context().Process(target=_nothing, name="fedvla-warm-probe")
    probe.start()
    probe.join()
    if probe.exitcode != 0:
        raise RuntimeError(f"the warm process's first child exited with {probe.exitcode}")
    took = time.monotonic() - started
    log.info("%s (%.1f s to import the engine)", READY_MESSAGE, took)
    return took


def _warm_up_once() -> None:
    try:
        warm_up()
    except BaseException as error:
        log.exception("the warm process failed to start; federations start cold")
        failure.append(error)
    finally:
        _ready.set()


def warm_up_in_background() -> None:
    """Starts the warm process once per process, in a thread: the worker takes tasks at once."""
    with _start_lock:
        if not _started:
            thread = threading.Thread(target=_warm_up_once, name="fedvla-warm-up", daemon=True)
            thread.start()
            _started.append(thread)


def wait_ready(timeout_s: float) -> bool:
    """Whether the warm process has finished starting (or failed to) within ``timeout_s``."""
    warm_up_in_background()
    return _ready.wait(timeout_s)

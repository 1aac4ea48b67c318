"""A site's node: Flower's SuperNode and fedvla's warm site trainer, one command.

Flower 1.42's SuperNode runs each message's ClientApp in a fresh ``flwr-clientapp`` process
(started by the ``flower-superexec`` it spawns in its default ``subprocess`` isolation), which
imported torch and lerobot and rebuilt the policy for every message: about 20 s per round on
2 CPUs for a second of training. Flower's own warm executors (Kubernetes only) serve other task
types, never ClientApps. So the SuperNode runs with ``--isolation process`` (it then waits for an
outside executor) and this process is that executor: it acquires each ClientApp task from the
SuperNode's Runtime API, pulls its message and context with Flower's own functions, runs
fedvla's ClientApp on them in one long-lived trainer process, and pushes the reply and the
task's outcome back, as ``flwr-clientapp`` would.

The trainer process is forked from this one once the engine is imported
(fedvla.orchestration.warm_imports) and keeps the ClientApp's module state
(fedvla.engine.federation.client_app: the policy, processors, dataset and loader workers) across
rounds and across runs of the same policy. A ClientApp exception is the task's error reply; a
trainer that dies (a native crash, killed for memory) fails its task and is forked again for the
next one. Only fedvla's ClientApp runs here: a run whose app names another is refused.

    python -m fedvla.orchestration.site_node <flower-supernode arguments>

Each task is logged as one ``site task`` line (JSON: seconds from acquiring the task to its
outcome pushed, seconds in the ClientApp, training seconds, policies built so far).
"""

import contextlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from fedvla.core.log_records import log_record, read_log_records

log = logging.getLogger("fedvla.site")

CLIENT_APP = "fedvla.engine.federation.client_app:app"
"""The one ClientApp a site runs."""
POLL_S = 0.05
"""How often the trainer asks the SuperNode for a task (Flower's SuperExec: 1 s): a local
request, half of it added to every round on average."""
PULL_BACKOFF_S = (0.05, 0.25)
"""First and longest wait before the trainer looks again for a message's arrays that the
SuperNode is still receiving (looking more often slows the SuperNode's own download)."""
OBJECT_TRANSFERS = 8
"""Arrays a SuperNode pulls or pushes at once (Flower's default: 2). A message travels as one
object per array, each its own request."""
CONCURRENT_OBJECT_TRANSFERS = (
    "FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PULLS",
    "FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES",
)
NODE_POLL_S = 0.1
"""How often the SuperNode asks the SuperLink for a message when idle (Flower's: 3 s) and looks
for the trainer's reply (Flower's: 0.5 s): each wait adds half of it to a round on average."""
MODULE = "fedvla.orchestration.site_node"
SUPERNODE_FLAG = "--flower-supernode"
"""First argument of the SuperNode child: this module runs Flower's SuperNode."""
START_TIMEOUT_S = 120.0
TASK_LOG_PREFIX = "site task "
PULL_LOG_PREFIX = "supernode pull "
"""A line the SuperNode prints for each message whose objects it pulled from the SuperLink."""


@dataclass
class TaskRecord:
    """What one task cost at the site."""

    task_id: int
    run_id: int
    message_type: str
    ok: bool
    seconds: float
    """From acquiring the task to its outcome pushed to the SuperNode."""
    app_seconds: float
    """In the ClientApp (the trainer process), hand-over included."""
    train_seconds: float
    """Training, as the ClientApp's reply reports it (0 for other messages)."""
    pull_seconds: float
    """Pulling the task's message and context from the SuperNode."""
    push_seconds: float
    """Pushing the reply and the task's outcome to the SuperNode."""
    policies_built: int
    trainer_pid: int

    def line(self) -> str:
        return log_record(TASK_LOG_PREFIX, self.__dict__)


def read_task_records(text: str, prefix: str = TASK_LOG_PREFIX) -> list[dict[str, Any]]:
    """The ``site task`` records of a site node's log (``supernode pull`` ones with
    PULL_LOG_PREFIX)."""
    return read_log_records(text, prefix)


def runtime_address(supernode_args: list[str]) -> str:
    """Where the SuperNode serves its Runtime API, from its arguments (Flower's defaults)."""
    from flwr.supercore.constant import SUPERNODE_UVICORN_DEFAULT_PORT, UVICORN_DEFAULT_HOST

    values = {"--host": UVICORN_DEFAULT_HOST, "--port": str(SUPERNODE_UVICORN_DEFAULT_PORT)}
    for index, arg in enumerate(supernode_args):
        name, equals, value = arg.partition("=")
        if name in values:
            values[name] = value if equals else supernode_args[index + 1]
    host = values["--host"]
    return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{values['--port']}"


def app_of(fab_content: bytes) -> str:
    """The ClientApp a FAB names."""
    with zipfile.ZipFile(io.BytesIO(fab_content)) as archive:
        project = tomllib.loads(archive.read("pyproject.toml").decode())
    return str(project["tool"]["flwr"]["app"]["components"]["clientapp"])


def _policies_built() -> int:
    """Policies built in the trainer process (it reports its own counter with each reply)."""
    from fedvla.engine.federation import client_app

    return client_app.policies_built


class SiteTrainer:
    """Acquires ClientApp tasks from the SuperNode's Runtime API and runs them warm."""

    def __init__(self, address: str) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        import fedvla.orchestration.warm_imports  # noqa: F401  the engine, imported before the trainer forks

        self.address = address
        self.trainer = Trainer()
        self.client = RuntimeHttpClient.from_server_address(
            server_address=address,
            insecure=True,
            root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def serve(self, stop: list[int]) -> None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        while not stop:
            response = self.client.AcquireTask(request)
            if response.HasField("task") and response.token:
                record = self.run_task(response.token)
                log.info(record.line())
            else:
                time.sleep(POLL_S)

    def run_task(self, token: str) -> TaskRecord:
        """One task, as flwr-clientapp runs it, but in the warm trainer."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        started = time.perf_counter()
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,
            root_certificates=None,
            interceptors=[
                RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                RuntimeTokenHttpInterceptor(token),
            ],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message = context = reply = None
        sub_status, details = SubStatus.FAILED, "the site trainer failed"
        app_seconds = train_seconds = pull_seconds = push_seconds = 0.0
        task_id = run_id = 0
        message_type = "?"
        try:
            task_id, message, context, fab = _pull_task_input(client)
            pull_seconds = time.perf_counter() - started
            run_id = int(context.run_id)
            message_type = message.metadata.message_type
            named = app_of(fab.content)
            if named != CLIENT_APP:
                raise PermissionError(f"this site runs only {CLIENT_APP}, the run names {named}")
            app_started = time.perf_counter()
            reply, context = self.trainer.run(message, context)
            app_seconds = time.perf_counter() - app_started
            train_seconds = _train_seconds(reply)
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as error:
            log.exception("the ClientApp failed")
            details = f"{type(error).__name__}: {error}"
            if message is not None:
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                    reply_to=message,
                )
        finally:
            pushing = time.perf_counter()
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client, context, sub_status, details)
                push_seconds = time.perf_counter() - pushing
            finally:
                heartbeat.stop()
                client.close()
        return TaskRecord(
            task_id=task_id,
            run_id=run_id,
            message_type=message_type,
            ok=sub_status == SubStatus.COMPLETED,
            seconds=round(time.perf_counter() - started, 4),
            app_seconds=round(app_seconds, 4),
            train_seconds=round(train_seconds, 4),
            pull_seconds=round(pull_seconds, 4),
            push_seconds=round(push_seconds, 4),
            policies_built=self.trainer.policies_built,
            trainer_pid=self.trainer.pid,
        )

    def close(self) -> None:
        self.trainer.close()
        self.client.close()


def _pull_task_input(client: Any) -> tuple[int, Any, Any, Any]:
    """The task's id, message, context and FAB: flwr-clientapp's pull_task_input, but looking
    again for the message's objects sooner (PULL_BACKOFF_S). The SuperNode offers the task as soon
    as it has the message's head, still downloading its arrays from the SuperLink; Flower's
    backoff (1 s, doubling) was harmless behind a 20 s interpreter start, not before a warm
    trainer: it added seconds to every round."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    task = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = task.task_id
    TaskIdentity.run_id = task.run.run_id
    TaskIdentity.node_id = task.context.node_id
    context = context_from_proto(task.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode offered a task without a message")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        max_tries_per_object=None,
        initial_backoff=PULL_BACKOFF_S[0],
        backoff_cap=PULL_BACKOFF_S[1],
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as flwr-clientapp sets it
    return int(task.task_id), message, context, fab_from_proto(task.fab)


def _train_seconds(reply: Any) -> float:
    from fedvla.engine.federation.protocol import read_train_reply

    if reply.has_error() or reply.metadata.message_type != "train":
        return 0.0
    _, metrics = read_train_reply(reply.content)
    return float(metrics.seconds)


class Trainer:
    """The long-lived trainer process (a one-process ForkedClientPool over a ClientApp, fedvla's
    by default), forked again when it dies."""

    def __init__(self, app: Any = None, report: Callable[[], int] = _policies_built) -> None:
        if app is None:
            from fedvla.engine.federation.client_app import app
        self.app = app
        self.report = report
        self.pool: Any = None
        self.policies_built = 0
        self.pid = 0
        self._start()

    def _start(self) -> None:
        from fedvla.engine.federation.forked_clients import ForkedClientPool, Placement, gpu_ids

        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(gpu_ids()))
        where = Placement(processes=1, threads=os.cpu_count() or 1, visible_gpus=[visible])
        self.pool = ForkedClientPool(self.app, where, report=self.report)
        self.pid = int(self.pool.workers[0].process.pid or 0)

    def run(self, message: Any, context: Any) -> tuple[Any, Any]:
        """The ClientApp's reply and context; ClientAppException when it raised,
        ClientProcessDied when the process died (a new one then serves the next message)."""
        from fedvla.engine.federation.forked_clients import ClientProcessDied

        try:
            reply, updated = self.pool.run(message, context)
        except ClientProcessDied:
            log.error("the trainer process %d died; a new one serves the next task", self.pid)
            self.pool.close()
            self._start()
            raise
        self.policies_built = int(self.pool.last_report or 0)
        return reply, updated

    def close(self) -> None:
        self.pool.close()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [SUPERNODE_FLAG]:
        return run_supernode(args[1:])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    logging.getLogger("flwr").propagate = False  # Flower prints its own (a line per call here)
    if "--isolation" not in args:
        args += ["--isolation", "process"]
    for name in CONCURRENT_OBJECT_TRANSFERS:  # read by Flower at import: set before both start
        os.environ.setdefault(name, str(OBJECT_TRANSFERS))
    supernode = subprocess.Popen([sys.executable, "-m", MODULE, SUPERNODE_FLAG, *args])
    stop: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    trainer: SiteTrainer | None = None
    try:
        trainer = SiteTrainer(runtime_address(args))
        _wait_for_runtime_api(trainer, supernode)
        log.info("site trainer ready (trainer process %d)", trainer.trainer.pid)
        watch = _watch(supernode, stop)
        trainer.serve(stop)
        watch.join()
    except KeyboardInterrupt:
        pass
    finally:
        if trainer is not None:
            trainer.close()
        if supernode.poll() is None:
            supernode.terminate()
            try:
                supernode.wait(30)
            except subprocess.TimeoutExpired:
                supernode.kill()
    code = supernode.wait()
    return code if code else (0 if stop else 1)


class _ShorterSleeps:
    """The ``time`` module, but sleeping at most NODE_POLL_S at a time."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, NODE_POLL_S))


def run_supernode(args: list[str]) -> int:
    """Flower's flower-supernode, polling every NODE_POLL_S instead of 3 s and 0.5 s.

    Flower 1.42's SuperNode sleeps 3 s whenever the SuperLink has no message for it and 0.5 s
    between looks for a reply (``start_client_internal``, not configurable): 1.75 s added to an
    average round, more than a tiny policy's training; and it pulls a message's arrays with a
    backoff from 1 s (see pull_objects_sooner). Only this process's view of ``time`` and
    ``pull_objects`` in that module changes.
    """
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli.flower_supernode import flower_supernode

    from fedvla.engine.federation.transport import pull_objects_sooner

    start_client_internal.time = _ShorterSleeps()  # type: ignore[assignment]
    pull_objects_sooner(start_client_internal)
    start_client_internal.pull_objects = _timed(start_client_internal.pull_objects)
    sys.argv = ["flower-supernode", *args]
    flower_supernode()
    return 0


def _timed(pull_objects: Callable[..., dict[str, bytes]]) -> Callable[..., dict[str, bytes]]:
    """``pull_objects``, printing a PULL_LOG_PREFIX line: how long the SuperNode took to pull a
    message's objects from the SuperLink (part of the trainer's pull_seconds)."""

    def pull(*args: Any, **kwargs: Any) -> dict[str, bytes]:
        started = time.perf_counter()
        contents = pull_objects(*args, **kwargs)
        seconds = round(time.perf_counter() - started, 4)
        record = {"objects": len(contents), "bytes": sum(map(len, contents.values()))}
        print(log_record(PULL_LOG_PREFIX, {**record, "seconds": seconds}), flush=True)
        return contents

    return pull


def _wait_for_runtime_api(trainer: SiteTrainer, supernode: "subprocess.Popen[bytes]") -> None:
    """Until the SuperNode answers on its Runtime API (or has exited: its code is ours)."""
    host, _, port = trainer.address.rpartition(":")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if supernode.poll() is not None:
            raise KeyboardInterrupt
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the SuperNode's Runtime API at {trainer.address} never answered")
        time.sleep(0.2)


def _watch(supernode: "subprocess.Popen[bytes]", stop: list[int]) -> Any:
    """A thread that ends the serving loop when the SuperNode exits."""
    import threading

    def wait() -> None:
        supernode.wait()
        stop.append(0)

    thread = threading.Thread(target=wait, name="fedvla-supernode-watch", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    sys.exit(main())

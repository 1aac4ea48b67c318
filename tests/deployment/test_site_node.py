"""The site node's warm trainer: one process keeps its state across messages, a process that
dies fails only its own message, and the site node reads what Flower gives it."""

import os
from collections.abc import Iterator

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.cli.build import build_fab_from_files
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException

from fedvla.engine.federation.forked_clients import ClientProcessDied
from fedvla.orchestration.site_node import (
    CLIENT_APP,
    TaskRecord,
    Trainer,
    app_of,
    read_task_records,
    runtime_address,
)

pytestmark = pytest.mark.usefixtures("task_identity")

app = ClientApp()
_served: list[int] = []
"""Messages this process has served: state a warm process keeps."""


@app.train()
def train(msg: Message, context: Context) -> Message:
    action = str(msg.content.config_records["config"]["action"])
    if action == "die":
        os._exit(3)  # as a native crash or an OOM kill ends a process: no exception, no reply
    if action == "raise":
        raise RuntimeError("a training step failed")
    _served.append(1)
    reply = ConfigRecord({"served": len(_served), "pid": os.getpid()})
    return Message(RecordDict({"config": reply}), reply_to=msg)


def _served_count() -> int:
    return len(_served)


def _message(action: str) -> tuple[Message, Context]:
    content = RecordDict({"config": ConfigRecord({"action": action})})
    message = Message(content, dst_node_id=1, message_type="train")
    message.metadata.__dict__["_message_id"] = message.object_id
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return message, context


@pytest.fixture
def trainer() -> Iterator[Trainer]:
    started = Trainer(app, report=_served_count)
    try:
        yield started
    finally:
        started.close()


def _served_by(trainer: Trainer, action: str = "train") -> tuple[int, int]:
    reply, _ = trainer.run(*_message(action))
    record = reply.content.config_records["config"]
    return int(record["served"]), int(record["pid"])


@pytest.mark.slow
def test_the_trainer_keeps_its_process_and_state_across_messages(trainer: Trainer) -> None:
    first = _served_by(trainer)
    second = _served_by(trainer)

    assert first[0] == 1 and second[0] == 2  # the second message found the first's state
    assert first[1] == second[1] == trainer.pid != os.getpid()
    assert trainer.policies_built == 2  # what the process reports after each message
    assert _served == []  # the state lives in the trainer process, not here


@pytest.mark.slow
def test_an_exception_fails_its_message_and_keeps_the_warm_process(trainer: Trainer) -> None:
    _served_by(trainer)
    with pytest.raises(ClientAppException, match="a training step failed"):
        trainer.run(*_message("raise"))

    assert _served_by(trainer) == (2, trainer.pid)


@pytest.mark.slow
def test_a_dead_trainer_fails_its_message_and_a_new_one_serves_the_next(
    trainer: Trainer,
) -> None:
    _, before = _served_by(trainer)
    with pytest.raises(ClientProcessDied):
        trainer.run(*_message("die"))

    served, after = _served_by(trainer)
    assert after == trainer.pid != before
    assert served == 1  # a cold process: it starts over


def test_the_site_node_reads_flowers_arguments_and_the_run_app() -> None:
    assert runtime_address(["--superlink", "x:9092"]) == "127.0.0.1:9094"
    assert runtime_address(["--port", "9123", "--host=0.0.0.0"]) == "127.0.0.1:9123"
    assert runtime_address(["--host", "10.0.0.5", "--port=9200"]) == "10.0.0.5:9200"

    def fab(clientapp: str) -> bytes:
        pyproject = f"""
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
[project]
name = "probe"
version = "1.0.0"
dependencies = []
[tool.flwr.app]
publisher = "someone"
[tool.flwr.app.components]
serverapp = "x:app"
clientapp = "{clientapp}"
"""
        return build_fab_from_files({"pyproject.toml": pyproject.encode()})[0]

    assert app_of(fab(CLIENT_APP)) == CLIENT_APP
    assert app_of(fab("evil.module:app")) == "evil.module:app"

    record = TaskRecord(1, 2, "train", True, 1.5, 1.2, 1.0, 0.1, 0.2, 1, 42)
    log = f"noise\n2026-01-01 INFO fedvla.site: {record.line()}\nsite task not json\n"
    assert read_task_records(log) == [record.__dict__]

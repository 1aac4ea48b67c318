"""StreamingGrid over Flower's own in-memory grid: each reply is handed on once it arrives."""

import threading
from typing import cast

import pytest
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fedvla.engine.federation.streaming_grid import StreamingGrid

RUN_ID, TASK_ID = 7, 8


@pytest.fixture
def grid() -> tuple[InMemoryGrid, InMemoryLinkState, list[int]]:
    """A grid on a link state with one run and two nodes, as Flower's simulation sets it up."""
    names = ("_task_id", "_run_id", "_node_id")
    saved = [getattr(TaskIdentity, name) for name in names]
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    state = cast(InMemoryLinkState, factory.state())
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id = TASK_ID
    run.federation_id = NOOP_FEDERATION_ID
    state.run_ids[RUN_ID] = RunRecord(run=run)
    state.task_store[TASK_ID] = Task(task_id=TASK_ID, run_id=RUN_ID)
    nodes = []
    for _ in range(2):
        node = state.create_node("aid", "name", b"key" + bytes(len(nodes)), heartbeat_interval=1e9)
        state.acknowledge_node_heartbeat(node_id=node, heartbeat_interval=1e9)
        nodes.append(node)
    inner = InMemoryGrid(state_factory=factory)
    inner.set_run(run)
    yield inner, state, nodes
    for name, value in zip(names, saved, strict=True):
        setattr(TaskIdentity, name, value)


def _answer(state: InMemoryLinkState, node: int) -> None:
    """What a node's client does: take its message and store a reply."""
    (message,) = state.get_message_ins(node_id=node, limit=1)
    reply = Message(RecordDict(), reply_to=message)
    reply.metadata.__dict__["_message_id"] = f"reply-from-{node}"
    state.store_message_res(reply)


def test_each_reply_is_handed_on_before_the_others_arrive(grid) -> None:  # type: ignore[no-untyped-def]
    inner, state, nodes = grid
    streaming = StreamingGrid(inner, pull_interval_s=0.001)
    messages = [
        streaming.create_message(RecordDict(), "train", node, group_id="1") for node in nodes
    ]
    replies = streaming.send_and_receive(messages, timeout=5.0)  # pushed now
    _answer(state, nodes[1])
    first = next(iter(replies))
    assert first.metadata.src_node_id == nodes[1]  # while nodes[0] has not answered
    _answer(state, nodes[0])
    assert [r.metadata.src_node_id for r in replies] == [nodes[0]]
    assert state.num_message_res() == 0  # the grid keeps none once pulled


def test_a_window_pushes_the_next_message_once_a_reply_is_handed_on(grid) -> None:  # type: ignore[no-untyped-def]
    inner, state, nodes = grid
    streaming = StreamingGrid(inner, pull_interval_s=0.001, max_in_flight=1)
    messages = [
        streaming.create_message(RecordDict(), "train", node, group_id="1") for node in nodes
    ]
    replies = iter(streaming.send_and_receive(messages, timeout=5.0))
    assert state.get_message_ins(node_id=nodes[1], limit=1) == []  # not pushed yet
    _answer(state, nodes[0])
    assert next(replies).metadata.src_node_id == nodes[0]
    # while the strategy adds the first update, the second client has nothing to answer yet
    assert state.get_message_ins(node_id=nodes[1], limit=1) == []
    answering = threading.Timer(0.05, _answer, (state, nodes[1]))
    answering.start()
    assert [r.metadata.src_node_id for r in replies] == [nodes[1]]  # pushed on resuming
    answering.join()
    assert state.num_message_res() == 0


def test_replies_stop_at_the_timeout(grid) -> None:  # type: ignore[no-untyped-def]
    inner, state, nodes = grid
    streaming = StreamingGrid(inner, pull_interval_s=0.001)
    messages = [
        streaming.create_message(RecordDict(), "train", node, group_id="1") for node in nodes
    ]
    replies = streaming.send_and_receive(messages, timeout=0.05)
    _answer(state, nodes[0])
    assert [r.metadata.src_node_id for r in replies] == [nodes[0]]

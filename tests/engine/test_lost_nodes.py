"""A node lost mid-round is one failed client of that round, under its own label."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.federation.strategy import RoundLog, TrackedStrategy, make_strategy
from tests.engine.test_aggregation import _reply


def _sent(node: int) -> Message:
    message = Message(RecordDict(), dst_node_id=node, message_type="train")
    message.metadata.__dict__["_message_id"] = f"message-to-{node}"  # as the grid's push sets it
    return message


def _ones(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))})


def _strategy(labels: dict[int, str]) -> TrackedStrategy:
    config = FederationConfig(
        policy="tiny",
        min_clients=1,
        partition=Partition(dataset=DatasetRef(repo_id="test/none"), num_clients=len(labels)),
    )
    strategy = make_strategy(config, round_offset=0)
    strategy.labels = labels
    return strategy


@pytest.mark.usefixtures("task_identity")
def test_a_node_the_superlink_reports_lost_counts_once_as_its_site() -> None:
    strategy = _strategy({5: "lab-a", 7: "lab-b"})
    to_a, to_b = _sent(5), _sent(7)
    strategy.log = RoundLog(sampled=[5, 7], sent=[to_a, to_b])
    # What the SuperLink answers for a node that went offline: an error from the SuperLink itself.
    lost = create_message_error_unavailable_res_message(to_b.metadata, "node_unavail")
    assert lost.metadata.src_node_id == SUPERLINK_NODE_ID

    update = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
    strategy.aggregate_train(1, [_reply(5, update, 4), lost])

    reports = {c.client: c for c in strategy.log.clients}
    assert sorted(reports) == ["lab-a", "lab-b"]  # no node-1, no second entry for lab-b
    assert reports["lab-a"].ok and not reports["lab-b"].ok
    assert reports["lab-b"].error and "no reply in time" not in reports["lab-b"].error


@pytest.mark.usefixtures("task_identity")
def test_a_node_that_joined_later_is_labelled_by_the_grid() -> None:
    strategy = _strategy({5: "lab-a"})
    strategy.node_names = {9: "lab-b"}.get  # lab-b re-keyed: a new node id
    to_new = _sent(9)
    strategy.log = RoundLog(sampled=[9], sent=[to_new])

    strategy.aggregate_train(1, [])

    assert [(c.client, c.ok, c.error) for c in strategy.log.clients] == [
        ("lab-b", False, "no reply in time")
    ]


class _SuperLinkGrid:
    """Flower's grid as the SuperLink answers it once a revoked site's node is unregistered: the
    message to that node is gone, and the SuperLink writes the error itself."""

    def __init__(self, replies: list[Message]) -> None:
        self.replies = replies

    def get_node_ids(self) -> list[int]:
        return [5, 7]

    def push_messages(self, messages: list[Message]) -> list[str]:
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: set[str]) -> list[Message]:
        return [r for r in self.replies if r.metadata.reply_to_message_id in message_ids]


@pytest.mark.usefixtures("task_identity")
def test_a_message_the_superlink_dropped_with_a_revoked_node_is_that_nodes_error() -> None:
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_ins_message

    from fedvla.orchestration.deployment.experiment_grid import ExperimentGrid

    to_a, to_b = _sent(5), _sent(7)
    from_a = _reply(5, _ones(1.0), 4, to=to_a, label="lab-a")
    dropped = create_message_error_unavailable_ins_message(to_b.metadata.message_id, 1)
    assert dropped.metadata.src_node_id == SUPERLINK_NODE_ID
    grid = ExperimentGrid(
        _SuperLinkGrid([from_a, dropped]),  # type: ignore[arg-type]
        nodes=lambda: {5: "lab-a", 7: "lab-b"},
        approved=lambda: {"lab-a", "lab-b"},
    )

    replies = list(grid.send_and_receive([to_a, to_b], timeout=10))

    assert sorted(r.metadata.src_node_id for r in replies) == [5, 7]
    strategy = _strategy({5: "lab-a", 7: "lab-b"})
    strategy.log = RoundLog(sampled=[5, 7], sent=[])  # even with no record of what was sent
    strategy.aggregate_train(1, replies)
    reports = {c.client: c for c in strategy.log.clients}
    assert sorted(reports) == ["lab-a", "lab-b"]
    assert reports["lab-b"].error and "Message Unavailable" in reports["lab-b"].error


@pytest.mark.usefixtures("task_identity")
def test_an_update_from_a_site_revoked_while_it_trained_is_not_averaged() -> None:
    from fedvla.orchestration.deployment.experiment_grid import ExperimentGrid

    to_a, to_b = _sent(5), _sent(7)
    approved = {"lab-a", "lab-b"}
    grid = ExperimentGrid(
        _SuperLinkGrid([_reply(5, _ones(1.0), 4, to=to_a), _reply(7, _ones(100.0), 4, to=to_b)]),  # type: ignore[arg-type]
        nodes=lambda: {5: "lab-a", 7: "lab-b"},  # the SuperLink still lists lab-b's node
        approved=lambda: set(approved),
    )
    assert list(grid.get_node_ids()) == [5, 7]
    grid.push_messages([to_a, to_b])
    approved.discard("lab-b")  # the admin revokes lab-b while both train

    replies = list(grid.pull_messages({to_a.metadata.message_id, to_b.metadata.message_id}))

    strategy = _strategy({5: "lab-a", 7: "lab-b"})
    strategy.log = RoundLog(sampled=[5, 7], sent=[to_a, to_b])
    averaged, _ = strategy.aggregate_train(1, replies)
    assert averaged is not None
    assert np.allclose(averaged["w"].numpy(), 1.0)  # lab-a's alone
    reports = {c.client: c for c in strategy.log.clients}
    assert reports["lab-a"].ok and not reports["lab-b"].ok
    assert reports["lab-b"].error and "no longer approved" in reports["lab-b"].error
    assert list(grid.get_node_ids()) == [5]  # and it is not sampled again


class _NodeLeaves:
    """Flower's grid while a site is revoked: its node is there at the first look only."""

    def __init__(self) -> None:
        self.reads = 0

    def get_node_ids(self) -> list[int]:
        self.reads += 1
        return [5, 7] if self.reads == 1 else [5]


@pytest.mark.usefixtures("task_identity")
def test_a_node_that_leaves_while_the_round_is_sampled_does_not_hold_the_round() -> None:
    import threading

    from flwr.app import ConfigRecord

    strategy = _strategy({5: "lab-a", 7: "lab-b"})
    sampled: list[list[int]] = []
    update = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})

    def configure() -> None:
        messages = strategy.configure_train(1, update, ConfigRecord(), _NodeLeaves())  # type: ignore[arg-type]
        sampled.append(sorted(m.metadata.dst_node_id for m in messages))

    thread = threading.Thread(target=configure, daemon=True)
    thread.start()
    thread.join(timeout=30)  # Flower alone waits here for a second node, for ever

    assert sampled == [[5, 7]]

"""The engine's weighted average: Flower's result within float rounding, summed as replies
arrive, in a fixed order (the same bits whichever client answered first)."""

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.federation import aggregation
from fedvla.engine.federation.aggregation import AggregationError, weighted_average
from fedvla.engine.federation.protocol import ARRAYS_KEY, TrainMetrics, train_reply
from fedvla.engine.federation.strategy import make_strategy
from fedvla.engine.federation.transport import pack_record


def _update(seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            # More elements than one block, and not a multiple of it.
            "expert.weight": Array(
                rng.standard_normal((3, aggregation.BLOCK_ELEMENTS + 7), dtype=np.float32)
            ),
            "expert.bias": Array(rng.standard_normal(5, dtype=np.float32)),
            "fortran": Array(np.asfortranarray(rng.standard_normal((4, 6)))),
            "scalar": Array(np.asarray(rng.standard_normal(), dtype=np.float32)),
            "counts": Array(rng.integers(0, 10, size=4)),
        }
    )


def _flower(updates: list[ArrayRecord], weights: list[float]) -> ArrayRecord:
    contents = [
        RecordDict({"arrays": u, "metrics": MetricRecord({"num-examples": w})})
        for u, w in zip(updates, weights, strict=True)
    ]
    return aggregate_arrayrecords(contents, "num-examples")


def _assert_flowers_within_rounding(
    averaged: ArrayRecord, updates: list[ArrayRecord], weights: list[float]
) -> None:
    """Flower scales by w_i / sum(w), the engine by w_i and divides at the end: they differ by
    at most the rounding of each client's term, never in dtype or shape."""
    expected = _flower(updates, weights)
    assert list(averaged.keys()) == list(expected.keys())
    for key, want in expected.items():
        got = averaged[key]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), key
        largest = max(float(np.abs(u[key].numpy()).max()) for u in updates)
        bound = 2 * len(updates) * np.finfo(want.numpy().dtype).eps * largest
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=bound, err_msg=key)


def test_flowers_average_within_rounding_same_dtypes_and_shapes() -> None:
    updates, weights = [_update(seed) for seed in range(3)], [10.0, 30.0, 5.0]
    averaged = weighted_average(updates, weights)
    _assert_flowers_within_rounding(averaged, updates, weights)
    assert averaged["expert.weight"].dtype == "float32"
    assert averaged["counts"].dtype == "float64"  # integers average as floats, as in Flower


def test_weights_are_respected() -> None:
    ones = ArrayRecord({"w": Array(np.ones(4, dtype=np.float32))})
    fives = ArrayRecord({"w": Array(np.full(4, 5.0, dtype=np.float32))})
    averaged = weighted_average([ones, fives], [3, 1])
    np.testing.assert_array_equal(averaged["w"].numpy(), np.full(4, 2.0, dtype=np.float32))


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (
            {"w": np.zeros(3, dtype=np.float32)},
            r"w: update 1 is float32\[3\], update 0 is float32\[4\]",
        ),
        ({"w": np.zeros(4, dtype=np.float64)}, r"w: update 1 is float64\[4\]"),
        ({"v": np.zeros(4, dtype=np.float32)}, "update 1 has other arrays than update 0"),
    ],
)
def test_updates_that_do_not_match_are_named(other: dict[str, np.ndarray], message: str) -> None:
    first = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    second = ArrayRecord({k: Array(v) for k, v in other.items()})
    with pytest.raises(AggregationError, match=message):
        weighted_average([first, second], [1, 1])


def test_weights_must_sum_above_zero() -> None:
    update = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    with pytest.raises(AggregationError, match="weights sum to 0"):
        weighted_average([update, update], [0, 0])


def _float32_update(seed: int) -> ArrayRecord:
    """The arrays of an update that a client sends: all in the transport dtype."""
    return ArrayRecord(
        {k: v for k, v in _update(seed).items() if v.dtype == str(np.dtype(np.float32))}
    )


def _reply(
    node: int, update: ArrayRecord, samples: int, *, to: Message | None = None, label: str = ""
) -> Message:
    """Node ``node``'s train reply with ``update`` (to ``to``, else to a message made here)."""
    metrics = TrainMetrics(
        train_loss=1.0,
        num_examples=samples,
        steps=1,
        episodes=1,
        seconds=0.1,
        load_seconds=0.0,
        skipped_frames=0,
        bytes_received=0,
        bytes_sent=update.count_bytes(),
    )
    instruction = to or Message(RecordDict(), dst_node_id=node, message_type="train")
    packed = pack_record(update, "float32")
    return Message(train_reply(packed, metrics, label or f"client-{node}"), reply_to=instruction)


def _strategy(name: str, clients: int, **settings: float):  # type: ignore[no-untyped-def]
    config = FederationConfig(
        policy="tiny",
        strategy=name,
        proximal_mu=0.1 if name == "fedprox" else 0.0,
        min_clients=1,
        partition=Partition(dataset=DatasetRef(repo_id="test/none"), num_clients=clients),
        **settings,  # type: ignore[arg-type]
    )
    strategy = make_strategy(config, round_offset=0)
    strategy.labels = {node: f"client-{node}" for node in range(1, clients + 1)}
    strategy.log.sampled = list(strategy.labels)
    return strategy


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_strategy_sum_does_not_depend_on_which_client_answered_first(name: str) -> None:
    updates = [_float32_update(seed) for seed in range(4)]
    weights = [7, 3, 11, 5]

    def aggregate(order: list[int]) -> ArrayRecord:
        replies = [_reply(i + 1, updates[i], weights[i]) for i in order]
        arrays, _ = _strategy(name, len(updates)).aggregate_train(1, replies)
        assert arrays is not None
        return arrays

    first, reversed_order = aggregate([0, 1, 2, 3]), aggregate([3, 1, 0, 2])
    batch = weighted_average(updates, weights)  # in the clients' order
    for key in batch:
        assert first[key].data == reversed_order[key].data == batch[key].data, key
    _assert_flowers_within_rounding(first, updates, [float(w) for w in weights])


def _arriving(replies: list[Message], arrived: list[Message]) -> Iterator[Message]:
    """The replies one at a time, each checked to come after the earlier ones were dropped."""
    for reply in replies:
        assert all(ARRAYS_KEY not in earlier.content for earlier in arrived)
        arrived.append(reply)
        yield reply


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam"])
def test_each_streamed_update_is_summed_and_dropped_before_the_next_arrives(name: str) -> None:
    updates = [_float32_update(seed) for seed in range(4)]
    weights = [7, 3, 11, 5]
    replies = [_reply(i + 1, updates[i], weights[i]) for i in range(4)]
    arrived: list[Message] = []

    strategy = _strategy(name, len(updates))
    if isinstance(strategy, FedAdam):
        strategy.current_arrays = {k: np.asarray(v.numpy()) for k, v in updates[0].items()}
    arrays, metrics = strategy.aggregate_train(1, _arriving(replies, arrived))
    assert arrays is not None and metrics is not None
    assert len(arrived) == 4 and all(ARRAYS_KEY not in r.content for r in replies)
    assert metrics["train-loss"] == pytest.approx(1.0)
    assert [c.client for c in strategy.log.clients] == [f"client-{n}" for n in range(1, 5)]
    if name != "fedadam":  # FedAdam steps from the average; the average itself is the batch one
        batch = weighted_average(updates, weights)
        for key in batch:
            assert arrays[key].data == batch[key].data, key


@pytest.mark.usefixtures("task_identity")
def test_replies_in_the_order_clients_are_sent_wait_for_none_past_nine_clients() -> None:
    # Flower's simulation hands the messages to its actors by partition: client-2 before
    # client-10. Replies in that order are each summed and dropped before the next arrives.
    clients = 12
    updates = [_float32_update(seed) for seed in range(clients)]
    replies = [_reply(i + 1, updates[i], 1) for i in range(clients)]
    arrived: list[Message] = []

    arrays, _ = _strategy("fedavg", clients).aggregate_train(1, _arriving(replies, arrived))
    assert arrays is not None and len(arrived) == clients


@pytest.mark.usefixtures("task_identity")
def test_fedadam_applies_its_server_step_to_the_engines_average() -> None:
    update = ArrayRecord({"w": Array(np.full(4, 1.0, dtype=np.float32))})
    strategy = _strategy("fedadam", 1)
    assert isinstance(strategy, FedAdam)
    strategy.current_arrays = {"w": np.zeros(4, dtype=np.float32)}
    arrays, _ = strategy.aggregate_train(1, [_reply(1, update, 10)])
    assert arrays is not None
    stepped = arrays["w"].numpy()
    # FedAdam moves from the current weights towards the average by at most its step size.
    assert np.all(stepped > 0) and np.all(stepped < 1.0)
    assert strategy.m_t is not None and strategy.v_t is not None


@pytest.mark.usefixtures("task_identity")
def test_fedavgm_steps_with_momentum_and_resumes_with_it() -> None:
    def round_with(strategy, server_round: int, average: float):  # type: ignore[no-untyped-def]
        update = ArrayRecord({"w": Array(np.full(4, average, dtype=np.float32))})
        arrays, _ = strategy.aggregate_train(server_round, [_reply(1, update, 10)])
        assert arrays is not None
        return arrays

    strategy = _strategy("fedavgm", 1)
    assert isinstance(strategy, FedAvgM) and strategy.server_momentum == 0.9
    strategy.current_arrays = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    # Round 1: no momentum yet, the average itself (a step of +1).
    first = round_with(strategy, 1, 1.0)
    np.testing.assert_allclose(first["w"].numpy(), 1.0)
    # Round 2: the clients again move +1 from the new weights; momentum adds 0.9 of round 1's.
    second = round_with(strategy, 2, 2.0)
    np.testing.assert_allclose(second["w"].numpy(), 1.0 + 1.0 + 0.9, rtol=1e-6)

    resumed = _strategy("fedavgm", 1)
    resumed.restore_server_state(strategy.server_state())
    resumed.current_arrays = second
    again = round_with(resumed, 3, 2.9 + 1.0)
    continued = round_with(strategy, 3, 2.9 + 1.0)
    np.testing.assert_array_equal(again["w"].numpy(), continued["w"].numpy())
    assert again["w"].numpy()[0] > 2.9 + 1.0  # the carried momentum moved it further


@pytest.mark.usefixtures("task_identity")
def test_fedavgm_takes_server_step_times_the_average() -> None:
    strategy = _strategy("fedavgm", 1, server_momentum=0.0, server_step=2.0)
    strategy.current_arrays = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    update = ArrayRecord({"w": Array(np.full(4, 0.5, dtype=np.float32))})

    arrays, _ = strategy.aggregate_train(1, [_reply(1, update, 10)])

    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)  # twice the clients' step of +0.5

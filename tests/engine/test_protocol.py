"""The message protocol: builders and parsers agree, Flower's strategies read what clients send,
and a message that lacks something is refused naming what it lacks."""

import gc
import weakref
from collections.abc import Iterable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.run import Run

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition, Strategy
from fedvla.engine.data.partition import DataPlan
from fedvla.engine.federation.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    STATS_KEY,
    ClientInfo,
    EvalMetrics,
    Instructions,
    ProtocolError,
    TrainMetrics,
    add_train_payload,
    describe_reply,
    drop_packed,
    evaluate_reply,
    instructions_record,
    query_message,
    read_client_info,
    read_evaluate_reply,
    read_instructions,
    read_train_message,
    read_train_reply,
    train_reply,
    with_camera_map,
)
from fedvla.engine.federation.strategy import make_strategy
from fedvla.engine.federation.transport import (
    PackedArrays,
    pack_arrays,
    pack_record,
    stats_to_record,
    to_array,
    unpack_arrays,
    unpack_values,
)

DATASET = DatasetRef(repo_id="synthetic/so100", root="/data/so100")
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [6]},
    "action": {"dtype": "float32", "shape": [6]},
    "observation.images.wrist": {"dtype": "video", "shape": [480, 640, 3]},
    "observation.images.front": {"dtype": "image", "shape": [480, 640, 3]},
}
STATS = {
    "observation.state": {"mean": np.arange(6.0), "std": np.ones(6)},
    "action": {"mean": np.zeros(6), "std": np.full(6, 2.0)},
}
METRICS = TrainMetrics(
    train_loss=0.5,
    num_examples=32,
    steps=4,
    episodes=3,
    seconds=1.25,
    load_seconds=0.5,
    skipped_frames=1,
    bytes_received=1000,
    bytes_sent=2000,
)


pytestmark = pytest.mark.usefixtures("task_identity")


def _config(strategy: str = "fedavg") -> FederationConfig:
    return FederationConfig(
        policy="tiny",
        strategy=strategy,  # type: ignore[arg-type]
        proximal_mu=0.25 if strategy == "fedprox" else 0.0,
        min_clients=2,
        partition=Partition(dataset=DATASET, num_clients=2),
    )


def _plan() -> DataPlan:
    shares = [DATASET.model_copy(update={"episodes": e}) for e in ([0, 2], [1, 3])]
    return DataPlan(shares, [DATASET.model_copy(update={"episodes": [4]})])


def _info(site_id: int | None = 4) -> ClientInfo:
    return ClientInfo(
        label="site-arm",
        site_id=site_id,
        dataset=DATASET,
        features=FEATURES,
        fps=30,
        stats=STATS,
        frames=144,
    )


def _weights() -> ArrayRecord:
    return ArrayRecord({"expert.weight": Array(np.ones((2, 3), dtype=np.float32))})


def _packed() -> PackedArrays:
    return pack_record(_weights(), "float32")


class _Grid(Grid):
    """The nodes, which is all that a strategy's configure steps ask of a grid."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> Iterable[int]:
        return self.nodes

    def set_run(self, run: Run) -> None:
        raise AssertionError("not used by configure steps")

    @property
    def run(self) -> Run:
        raise AssertionError("not used by configure steps")

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise AssertionError("not used by configure steps")

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise AssertionError("not used by configure steps")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise AssertionError("not used by configure steps")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise AssertionError("not used by configure steps")


def test_instructions_survive_the_query_message() -> None:
    # Prepare
    instructions = Instructions(_config(), "/srv/data", _plan())

    # Execute
    message = query_message(7, instructions)

    # Assert
    assert message.metadata.message_type == MessageType.QUERY
    assert message.metadata.dst_node_id == 7
    assert read_instructions(message) == instructions


def test_a_camera_map_goes_to_its_own_message_only() -> None:
    instructions = Instructions(_config(), "/srv/data", _plan())
    shared = RecordDict({CONFIG_KEY: instructions_record(instructions)})
    to_site = Message(shared, dst_node_id=7, message_type=MessageType.QUERY)
    to_other = Message(shared, dst_node_id=8, message_type=MessageType.QUERY)
    renamed = {"observation.images.wrist": "observation.images.front"}

    with_camera_map(to_site, renamed)

    assert read_instructions(to_site).camera_map == renamed
    assert read_instructions(to_other).camera_map is None  # the shared records are untouched
    with_camera_map(to_other, {})
    assert read_instructions(to_other).camera_map == {}  # agreeing cameras: no renaming


def test_client_info_survives_the_query_reply() -> None:
    for site_id in (4, None):
        info = read_client_info(describe_reply(_info(site_id)))
        assert (info.label, info.site_id, info.dataset, info.fps, info.frames) == (
            "site-arm",
            site_id,
            DATASET,
            30,
            144,
        )
        assert info.features == FEATURES
        assert info.stats.keys() == STATS.keys()
        for feature, values in STATS.items():
            for name, value in values.items():
                np.testing.assert_array_equal(info.stats[feature][name], value)


def test_dataset_features_are_what_the_experiment_compares() -> None:
    features = _info().dataset_features
    assert (features.state_dim, features.action_dim, features.fps) == (6, 6, 30)
    assert features.cameras == ("observation.images.front", "observation.images.wrist")


@pytest.mark.parametrize(("strategy", "mu"), [("fedavg", 0.0), ("fedprox", 0.25)])
def test_the_strategy_train_message_reads_back(strategy: str, mu: float) -> None:
    # Prepare
    config = _config(strategy)
    tracked = make_strategy(config, round_offset=2)
    instructions = Instructions(config, "/srv/data", _plan())
    tracked.norm_stats = stats_to_record(STATS)

    # Execute
    messages = list(
        tracked.configure_train(1, _weights(), instructions_record(instructions), _Grid([1, 2]))
    )

    # Assert
    assert len(messages) == 2
    for message in messages:
        order = read_train_message(message)
        assert order.server_round == 3  # the round offset of a resumed run
        assert order.proximal_mu == mu
        assert list(unpack_values(order.arrays)) == ["expert.weight"]
        assert order.stats is not None
        np.testing.assert_array_equal(order.stats["action"]["std"], STATS["action"]["std"])
        assert read_instructions(message) == instructions
        # Through a SuperLink each object is a request at every hop: the message, its records,
        # the update's Array and its chunk; the statistics ride in the config.
        kinds = sorted(type(o).__name__ for o in get_all_nested_objects(message).values())
        assert kinds == [
            "Array", "ArrayChunk", "ArrayRecord", "ConfigRecord", "Message", "RecordDict"
        ]  # fmt: skip


def test_train_message_without_federated_stats() -> None:
    content = RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1})})
    add_train_payload(content, _packed(), None)
    order = read_train_message(Message(content, dst_node_id=1, message_type=MessageType.TRAIN))
    assert order.stats is None and order.proximal_mu == 0.0


def test_train_reply_round_trip_and_flower_reads_its_weight() -> None:
    arrays, metrics = read_train_reply(train_reply(_packed(), METRICS, "site-arm"))
    assert metrics == METRICS
    assert list(unpack_values(arrays)) == ["expert.weight"]
    reply = train_reply(_packed(), METRICS, "site-arm")
    strategy = make_strategy(_config(), round_offset=0)
    assert (strategy.arrayrecord_key, strategy.configrecord_key) == (ARRAYS_KEY, CONFIG_KEY)
    assert strategy.weighted_by_key == NUM_EXAMPLES
    assert reply[METRICS_KEY][NUM_EXAMPLES] == 32  # type: ignore[index]


@pytest.mark.parametrize("strategy", [s.value for s in Strategy])
def test_evaluate_messages_go_on_evaluation_rounds_to_clients_that_hold_episodes_out(
    strategy: str,
) -> None:
    config = _config(strategy)
    tracked = make_strategy(config, round_offset=2)
    tracked.evaluates = lambda server_round: server_round == 4
    tracked.no_eval_nodes = {2}
    tracked.norm_stats = stats_to_record(_info().stats)
    instructions = instructions_record(Instructions(config, "/srv/data", _plan()))

    between = tracked.configure_evaluate(1, _weights(), instructions, _Grid([1, 2, 3]))
    messages = list(tracked.configure_evaluate(2, _weights(), instructions, _Grid([1, 2, 3])))

    assert list(between) == []  # round 3 (with the offset) is no evaluation round
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 3]  # node 2 keeps none back
    for message in messages:
        assert message.metadata.message_type == MessageType.EVALUATE
        order = read_train_message(message)
        assert order.server_round == 4 and list(unpack_values(order.arrays)) == ["expert.weight"]
        assert order.stats is not None
        assert read_instructions(message).federation == config


def test_evaluation_off_sends_no_evaluate_message() -> None:
    tracked = make_strategy(_config().model_copy(update={"eval_every": 0}), round_offset=0)
    tracked.evaluates = lambda server_round: True
    assert tracked.fraction_evaluate == 0.0
    assert list(tracked.configure_evaluate(1, _weights(), ConfigRecord(), _Grid([1, 2]))) == []


def test_evaluate_replies_are_kept_per_client_and_averaged_by_samples() -> None:
    tracked = make_strategy(_config(), round_offset=0)
    tracked.labels = {1: "client-0", 2: "client-1", 3: "client-2"}
    replies = []
    for node, metrics in (
        (1, EvalMetrics(eval_loss=1.0, action_mse=10.0, num_examples=8)),
        (2, EvalMetrics(eval_loss=4.0, action_mse=40.0, num_examples=24)),
        (3, EvalMetrics(eval_loss=float("nan"), action_mse=1.0, num_examples=8)),
    ):
        asked = Message(RecordDict(), dst_node_id=node, message_type=MessageType.EVALUATE)
        asked.metadata.__dict__["_message_id"] = f"m{node}"
        replies.append(Message(evaluate_reply(metrics, f"client-{node - 1}"), reply_to=asked))
    total = tracked.aggregate_evaluate(1, replies)

    assert total is not None
    assert total["eval-loss"] == pytest.approx((1.0 * 8 + 4.0 * 24) / 32)
    assert total["action-mse"] == pytest.approx((10.0 * 8 + 40.0 * 24) / 32)
    assert [(e.client, e.samples) for e in tracked.log.evaluations] == [
        ("client-0", 8),
        ("client-1", 24),
    ]
    assert tracked.log.eval_errors == [
        "client-2: its evaluation is not finite (left out of the average)"
    ]
    assert read_evaluate_reply(evaluate_reply(EvalMetrics(0.5, 2.0, 4), "x")) == EvalMetrics(
        0.5, 2.0, 4
    )


def test_a_reply_without_a_metric_is_refused_naming_it() -> None:
    reply = train_reply(_packed(), METRICS, "site-arm")
    del reply[METRICS_KEY]["train-loss"]  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="train reply's 'metrics' lacks 'train-loss'"):
        read_train_reply(reply)


def test_a_reply_without_a_record_is_refused_naming_it() -> None:
    reply = train_reply(_packed(), METRICS, "site-arm")
    del reply[ARRAYS_KEY]
    with pytest.raises(ProtocolError, match="train reply lacks the ArrayRecord 'arrays'"):
        read_train_reply(reply)
    described = describe_reply(_info())
    del described[CONFIG_KEY][STATS_KEY]  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="query reply's 'config' lacks 'norm-stats'"):
        read_client_info(described)


def test_statistics_that_are_not_a_packed_array_are_refused_naming_them() -> None:
    described = describe_reply(_info())
    described[CONFIG_KEY][STATS_KEY] = b"not an array"  # type: ignore[index]
    with pytest.raises(ProtocolError, match="query reply's 'config': 'norm-stats' is not a"):
        read_client_info(described)
    described[CONFIG_KEY][STATS_KEY] = "text"  # type: ignore[index]
    with pytest.raises(ProtocolError, match="'norm-stats' is a str, not bytes"):
        read_client_info(described)


def test_a_query_reply_without_a_field_is_refused_naming_it() -> None:
    described = describe_reply(_info())
    del described[CONFIG_KEY]["fps"]  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="query reply's 'config' lacks 'fps'"):
        read_client_info(described)


def test_a_record_of_the_wrong_kind_is_refused() -> None:
    reply = train_reply(_packed(), METRICS, "site-arm")
    reply[METRICS_KEY] = ConfigRecord({"train-loss": 1.0})
    with pytest.raises(ProtocolError, match="'metrics' is a ConfigRecord, not a MetricRecord"):
        read_train_reply(reply)


def test_a_message_without_instructions_is_refused() -> None:
    message = Message(RecordDict(), dst_node_id=1, message_type=MessageType.QUERY)
    with pytest.raises(ProtocolError, match="message lacks the ConfigRecord 'config'"):
        read_instructions(message)
    record = instructions_record(Instructions(_config(), "/srv/data", _plan()))
    del record["data-plan"]
    message = Message(RecordDict({CONFIG_KEY: record}), dst_node_id=1, message_type="query")
    with pytest.raises(ProtocolError, match="message's 'config' lacks 'data-plan'"):
        read_instructions(message)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_train_message_carries_the_update_as_one_array_bit_exactly(dtype: str) -> None:
    """However many tensors the policy trains, its update crosses as ONE Array (Flower moves
    each Array as its own objects), and reads back with the same bits."""
    # Prepare
    generator = torch.Generator().manual_seed(3)
    state = {
        "expert.layers.0.weight": torch.randn(5, 7, generator=generator),
        "expert.layers.0.bias": torch.randn(7, generator=generator),
        "action_out_proj.weight": torch.randn(2, 3, 4, generator=generator),
        "scale": torch.tensor(0.1),
    }
    if dtype == "bfloat16":  # values a bfloat16 holds exactly, so the round trip keeps them
        state = {k: v.to(torch.bfloat16).float() for k, v in state.items()}
    record = ArrayRecord({k: to_array(v.numpy()) for k, v in state.items()})
    tracked = make_strategy(_config().model_copy(update={"transport_dtype": dtype}), round_offset=0)
    instructions = Instructions(_config(), "/srv/data", _plan())

    # Execute
    train = instructions_record(instructions)
    message, _ = tracked.configure_train(1, record, train, _Grid([1, 2]))
    order = read_train_message(message)
    back = unpack_arrays(order.arrays, dtype)
    reply = Message(train_reply(pack_arrays(back, dtype), METRICS, "site-arm"), reply_to=message)
    arrays, _ = read_train_reply(reply.content)

    # Assert
    sent = message.content[ARRAYS_KEY]
    assert isinstance(sent, ArrayRecord) and list(sent.keys()) == ["packed"]
    assert len(sent["packed"].data) < 4 * 200  # the values once, and one small header
    assert list(reply.content[ARRAYS_KEY].keys()) == ["packed"]  # type: ignore[union-attr]
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == torch.float32 and back[key].shape == value.shape
        assert torch.equal(back[key].view(torch.int32), value.view(torch.int32)), key
    for key, value in unpack_arrays(arrays, dtype).items():
        assert torch.equal(value.view(torch.int32), state[key].view(torch.int32)), key
    if dtype == "float32":  # read in place: the tensors share the received bytes
        assert not unpack_values(order.arrays)["scale"].flags.writeable


def test_a_packed_update_whose_layout_does_not_fit_is_refused() -> None:
    reply = train_reply(_packed(), METRICS, "site-arm")
    del reply[CONFIG_KEY]["arrays-layout"]  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="train reply's 'config' lacks 'arrays-layout'"):
        read_train_reply(reply)
    content = RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1})})
    add_train_payload(content, _packed(), stats_to_record(STATS))
    content[CONFIG_KEY]["norm-stats-layout"] = '[["action|mean", [99]]]'  # type: ignore[index]
    message = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    with pytest.raises(ProtocolError, match=r"train message: layout entry 'action\|mean'"):
        read_train_message(message)


def test_a_dropped_update_goes_at_once_though_flowers_record_views_saw_it() -> None:
    """Flower's RecordDict.array_records view refers to itself (a bound method): garbage that
    only the cycle collector frees. The update it saw must not wait with it."""
    content = train_reply(pack_arrays({"w": torch.ones(1024)}, "float32"), METRICS, "client-0")
    update = weakref.ref(next(iter(content[ARRAYS_KEY].values())))
    assert len(content.array_records) == 1  # as Flower's reply checks read it
    collecting = gc.isenabled()
    gc.disable()
    try:
        drop_packed(content, ARRAYS_KEY)
        assert ARRAYS_KEY not in content
        assert update() is None
    finally:
        if collecting:
            gc.enable()

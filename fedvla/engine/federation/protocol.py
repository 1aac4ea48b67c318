"""The messages between the ServerApp and the ClientApp: their keys, builders and parsers.

Three keys are Flower's strategy defaults (FedAvg's ``arrayrecord_key``, ``configrecord_key``
and ``weighted_by_key``): a train message carries the weights under "arrays" and its settings
under "config", where FedAvg adds "server-round" and FedProx "proximal-mu"; a reply's update is
weighted by the "num-examples" of its one MetricRecord.

Server to client, every message: "config" = the instructions (the experiment, the data folder,
the data plan; in deployment, "camera-map": the site's cameras renamed to the experiment's, as
the server computes them when the run starts). A train message adds "arrays" and, with federated
normalisation, "norm-stats" in its "config".
Client to server: a query reply is the client's description (ClientInfo), its statistics under
"norm-stats" in its "config"; a train reply is its weights under "arrays" and its TrainMetrics
under "metrics".
An evaluate message is built like a train message (the aggregated weights under "arrays", the
federated statistics in its "config"); its reply is the client's EvalMetrics on its own
held-out episodes under "metrics".

"arrays" is packed (transport.PackedArrays): an ArrayRecord holding ONE Array under "packed",
its layout (each array's key and shape, in order) in the message's "config" under
"arrays-layout". The strategy's arrays stay one Array per key; only the wire carries them
packed. The statistics (a few KB) are packed too, but travel as bytes in the "config" under
"norm-stats", their layout under "norm-stats-layout": through a SuperLink every record, Array
and Array chunk is its own object, moved by its own request at each hop, and an ArrayRecord of
their own made 3 of a train message's 9 objects.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from pydantic import TypeAdapter

from fedvla.core.experiment_config import DatasetRef, FederationConfig
from fedvla.engine.camera_map import format_camera_map, parse_camera_map
from fedvla.engine.data.features import DatasetFeatures
from fedvla.engine.data.partition import DataPlan
from fedvla.engine.data.stats import Stats
from fedvla.engine.federation.transport import (
    LayoutError,
    PackedArrays,
    as_float,
    as_int,
    npy_array,
    stats_from_record,
    stats_to_record,
)

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
STATS_KEY = "norm-stats"
NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
CAMERA_MAP = "camera-map"
PACKED = "packed"
"""The one Array of a packed ArrayRecord."""
LAYOUTS = {ARRAYS_KEY: "arrays-layout", STATS_KEY: "norm-stats-layout"}
"""Where in the message's "config" the layout of each packed ArrayRecord is."""
EVAL_FRAMES = "eval-frames"
NO_SITE = -1
"""The site id a client without one (simulation) sends: a ConfigRecord holds no None."""

_PLAN = TypeAdapter(DataPlan)


class ProtocolError(ValueError):
    """A message lacks a record or a value the other side must send."""


def kebab(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class Instructions:
    """What every message from the server tells a client: enough to need no other config."""

    federation: FederationConfig
    data_dir: str
    """The server's data folder (the tiny VLM's assets); a node's "data-dir" overrides it."""
    plan: DataPlan
    """Simulation: client i trains on plan.clients[i] (computed once, by the server)."""
    camera_map: dict[str, str] | None = None
    """Deployment: this site's cameras renamed to the experiment's ({} when they agree); None
    where the server sends none (simulation, or a server older than the site's kit)."""


def instructions_record(instructions: Instructions) -> ConfigRecord:
    return ConfigRecord(
        {
            "federation": instructions.federation.model_dump_json(),
            "data-dir": instructions.data_dir,
            "data-plan": _PLAN.dump_json(instructions.plan).decode(),
        }
    )


def read_instructions(msg: Message) -> Instructions:
    record = _record(msg.content, CONFIG_KEY, ConfigRecord, "message")
    where = f"message's {CONFIG_KEY!r}"
    cameras = record.get(CAMERA_MAP)
    return Instructions(
        federation=FederationConfig.model_validate_json(str(_value(record, "federation", where))),
        data_dir=str(_value(record, "data-dir", where)),
        plan=_PLAN.validate_json(str(_value(record, "data-plan", where))),
        camera_map=None if cameras is None else parse_camera_map(str(cameras)),
    )


def with_camera_map(msg: Message, mapping: dict[str, str]) -> None:
    """Gives this message, and no other, a site's camera map: its own copy of the content, whose
    records the server's messages to every node share."""
    config = ConfigRecord(dict(_record(msg.content, CONFIG_KEY, ConfigRecord, "message")))
    config[CAMERA_MAP] = format_camera_map(mapping)
    content = RecordDict(dict(msg.content))
    content[CONFIG_KEY] = config
    msg.content = content


def query_message(node_id: int, instructions: Instructions) -> Message:
    """The first message to a client: describe yourself (answered with describe_reply)."""
    content = RecordDict({CONFIG_KEY: instructions_record(instructions)})
    return Message(content, dst_node_id=node_id, message_type=MessageType.QUERY)


@dataclass(frozen=True)
class ClientInfo:
    """A client's answer to the query: who it is and what its dataset holds."""

    label: str
    site_id: int | None
    dataset: DatasetRef
    features: dict[str, Any]
    """lerobot's info.json "features" of the client's dataset."""
    fps: int
    stats: Stats
    """The dataset's statistics of the normalised features."""
    frames: int
    """Frames it trains on."""
    eval_frames: int = 0
    """Frames of its own held-out episodes (federated evaluation); 0: it evaluates nothing."""

    @property
    def dataset_features(self) -> DatasetFeatures:
        """What the experiment needs every dataset to agree on."""
        cameras = sorted(
            k for k, f in self.features.items() if f.get("dtype") in ("image", "video")
        )
        return DatasetFeatures(
            state_dim=int(self.features["observation.state"]["shape"][0]),
            action_dim=int(self.features["action"]["shape"][0]),
            cameras=tuple(cameras),
            fps=self.fps,
        )


def describe_reply(info: ClientInfo) -> RecordDict:
    content = RecordDict(
        {
            CONFIG_KEY: ConfigRecord(
                {
                    "label": info.label,
                    "site-id": NO_SITE if info.site_id is None else info.site_id,
                    "dataset": info.dataset.model_dump_json(),
                    "features": json.dumps(info.features),
                    "fps": info.fps,
                }
            ),
            METRICS_KEY: MetricRecord({NUM_EXAMPLES: info.frames, EVAL_FRAMES: info.eval_frames}),
        }
    )
    put_stats(content, stats_to_record(info.stats))
    return content


def read_client_info(content: RecordDict) -> ClientInfo:
    what = "query reply"
    record = _record(content, CONFIG_KEY, ConfigRecord, what)
    metrics = _record(content, METRICS_KEY, MetricRecord, what)
    where = f"query reply's {CONFIG_KEY!r}"
    site_id = as_int(record.get("site-id", NO_SITE))
    return ClientInfo(
        label=str(_value(record, "label", where)),
        site_id=None if site_id == NO_SITE else site_id,
        dataset=DatasetRef.model_validate_json(str(_value(record, "dataset", where))),
        features=json.loads(str(_value(record, "features", where))),
        fps=as_int(_value(record, "fps", where)),
        stats=_unpacked(stats_from_record, _required_stats(content, what), what),
        frames=as_int(_value(metrics, NUM_EXAMPLES, f"query reply's {METRICS_KEY!r}")),
        eval_frames=as_int(metrics.get(EVAL_FRAMES, 0)),
    )


def put_packed(content: RecordDict, key: str, packed: PackedArrays) -> None:
    """Packed arrays under ``key`` (ARRAYS_KEY), their layout in the "config"."""
    record = ArrayRecord()  # item by item: ArrayRecord(dict) would make a plain Array of an
    record[PACKED] = packed.array  # OutOfBandArray (transport.out_of_band_array)
    content[key] = record
    _record(content, CONFIG_KEY, ConfigRecord, "message")[LAYOUTS[key]] = packed.layout


def drop_packed(content: RecordDict, key: str) -> None:
    """Remove the packed arrays under ``key``, emptying their record first, so that the bytes
    go now: Flower's record views (RecordDict.array_records, made on every read of it) refer to
    themselves through a bound method, so a record that one of them saw waits, with its arrays,
    for Python's cycle collector. A 97 MB update per reply then waited in the server until the
    next full collection: the medium policy's server held up to 6 at once (16 clients)."""
    record = content.get(key)
    if isinstance(record, ArrayRecord):
        record.clear()
    if key in content:
        del content[key]


def read_packed(content: RecordDict, key: str, what: str) -> PackedArrays:
    record = _record(content, key, ArrayRecord, what)
    if list(record.keys()) != [PACKED]:
        raise ProtocolError(f"{what}: {key!r} holds {list(record.keys())[:5]}, not one {PACKED!r}")
    config = _record(content, CONFIG_KEY, ConfigRecord, what)
    layout = str(_value(config, LAYOUTS[key], f"{what}'s {CONFIG_KEY!r}"))
    return PackedArrays(record[PACKED], layout)


def put_stats(content: RecordDict, packed: PackedArrays) -> None:
    """Packed statistics as bytes in the message's "config", with their layout."""
    config = _record(content, CONFIG_KEY, ConfigRecord, "message")
    config[STATS_KEY] = packed.array.data
    config[LAYOUTS[STATS_KEY]] = packed.layout


def read_stats(content: RecordDict, what: str) -> PackedArrays | None:
    """The packed statistics in the message's "config", None when it carries none."""
    config = _record(content, CONFIG_KEY, ConfigRecord, what)
    if STATS_KEY not in config:
        return None
    where = f"{what}'s {CONFIG_KEY!r}"
    data = config[STATS_KEY]
    if not isinstance(data, bytes):
        raise ProtocolError(f"{where}: {STATS_KEY!r} is a {type(data).__name__}, not bytes")
    layout = str(_value(config, LAYOUTS[STATS_KEY], where))
    try:
        return PackedArrays(npy_array(data), layout)
    except ValueError as error:
        raise ProtocolError(f"{where}: {STATS_KEY!r} is not a packed array ({error})") from error


def _required_stats(content: RecordDict, what: str) -> PackedArrays:
    stats = read_stats(content, what)
    if stats is None:
        raise ProtocolError(f"{what}'s {CONFIG_KEY!r} lacks {STATS_KEY!r}")
    return stats


def add_train_payload(
    content: RecordDict, arrays: PackedArrays, stats: PackedArrays | None
) -> None:
    """Put the weights (and the federated statistics, if any) into a train message."""
    put_packed(content, ARRAYS_KEY, arrays)
    if stats is not None:
        put_stats(content, stats)


@dataclass(frozen=True)
class TrainOrder:
    """A train message, read by the client."""

    arrays: PackedArrays
    stats: Stats | None
    """The merged statistics to normalise with (federated normalisation), else None."""
    server_round: int
    proximal_mu: float


def read_train_message(msg: Message) -> TrainOrder:
    what = "train message"
    record = _record(msg.content, CONFIG_KEY, ConfigRecord, what)
    stats = read_stats(msg.content, what)
    return TrainOrder(
        arrays=read_packed(msg.content, ARRAYS_KEY, what),
        stats=_unpacked(stats_from_record, stats, what) if stats is not None else None,
        server_round=as_int(_value(record, SERVER_ROUND, f"{what}'s {CONFIG_KEY!r}")),
        proximal_mu=as_float(record.get(PROXIMAL_MU, 0.0)),
    )


@dataclass(frozen=True)
class TrainMetrics:
    """A client's account of one round of local training (kebab-case keys on the wire)."""

    train_loss: float
    num_examples: int
    """Samples trained on: the weight of this client's update."""
    steps: int
    episodes: int
    seconds: float
    load_seconds: float
    skipped_frames: int
    bytes_received: int
    bytes_sent: int


def train_reply(arrays: PackedArrays, metrics: TrainMetrics, label: str) -> RecordDict:
    record = MetricRecord({kebab(f.name): getattr(metrics, f.name) for f in fields(metrics)})
    content = RecordDict({METRICS_KEY: record, CONFIG_KEY: ConfigRecord({"label": label})})
    put_packed(content, ARRAYS_KEY, arrays)
    return content


def read_train_reply(content: RecordDict) -> tuple[PackedArrays, TrainMetrics]:
    arrays = read_packed(content, ARRAYS_KEY, "train reply")
    record = _record(content, METRICS_KEY, MetricRecord, "train reply")
    values: dict[str, Any] = {}
    for field in fields(TrainMetrics):
        value = _value(record, kebab(field.name), f"train reply's {METRICS_KEY!r}")
        values[field.name] = as_int(value) if field.type is int else as_float(value)
    return arrays, TrainMetrics(**values)


def _unpacked[T](read: Callable[[PackedArrays], T], packed: PackedArrays, what: str) -> T:
    try:
        return read(packed)
    except LayoutError as error:
        raise ProtocolError(f"{what}: {error}") from error


@dataclass(frozen=True)
class EvalMetrics:
    """A client's evaluation of the aggregated policy on its own held-out episodes."""

    eval_loss: float
    action_mse: float
    """In the dataset's units (unnormalised)."""
    num_examples: int
    """Samples evaluated: the weight of this client in the round's federated average."""


def evaluate_reply(metrics: EvalMetrics, label: str) -> RecordDict:
    record = MetricRecord({kebab(f.name): getattr(metrics, f.name) for f in fields(metrics)})
    return RecordDict({METRICS_KEY: record, CONFIG_KEY: ConfigRecord({"label": label})})


def read_evaluate_reply(content: RecordDict) -> EvalMetrics:
    record = _record(content, METRICS_KEY, MetricRecord, "evaluate reply")
    where = f"evaluate reply's {METRICS_KEY!r}"
    return EvalMetrics(
        eval_loss=as_float(_value(record, "eval-loss", where)),
        action_mse=as_float(_value(record, "action-mse", where)),
        num_examples=as_int(_value(record, NUM_EXAMPLES, where)),
    )


def _record[R: (ArrayRecord, ConfigRecord, MetricRecord)](
    content: RecordDict, key: str, kind: type[R], what: str
) -> R:
    if key not in content:
        raise ProtocolError(f"{what} lacks the {kind.__name__} {key!r}")
    record = content[key]
    if not isinstance(record, kind):
        raise ProtocolError(f"{what}: {key!r} is a {type(record).__name__}, not a {kind.__name__}")
    return record


def _value(record: ConfigRecord | MetricRecord, key: str, where: str) -> object:
    if key not in record:
        raise ProtocolError(f"{where} lacks {key!r}")
    return record[key]

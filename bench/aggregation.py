"""Aggregation: how fast does the server average N client updates of smolvla_base's shape?

Client updates are random float32 arrays with the shapes of smolvla_base's trainable parameters
(99.9M, built on the meta device from bench/comm_bytes.py's config), wrapped as the engine's
train replies (the update packed in one Array + the client's MetricRecord). For N = 2, 4, 8, 16
it times:
  engine  - fedvla/engine/federation/strategy.py's TrackedFedAvg.aggregate_train (the engine's path:
            its bookkeeping, Flower's reply checks and metric aggregation, then
            fedvla/engine/federation/aggregation.py's running sum: each update, read in place from
            the bytes its reply holds, scaled a block at a time and added as it is read);
  flower  - Flower's stock FedAvg.aggregate_train on the same replies;
  bound   - a streaming numpy add (acc += x) over the same bytes, in place, read from the very
            buffers the replies hold: what memory bandwidth allows for one pass over the input.
Each is the median of --repeats, the three taking turns. N is capped by free memory
(MemAvailable) at the start.
Target: engine at least half the bound's speed, and no slower than Flower's stock path.
Writes bench/results/aggregation.{json,md}.

    .venv/bin/python bench/aggregation.py [--clients 2,4,8,16] [--repeats 5]
"""

import gc
import json
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from common import (
    Recorder,
    available_memory_bytes,
    bench_parser,
    markdown_table,
    median,
)
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.federation.protocol import (
    ARRAYS_KEY,
    TrainMetrics,
    put_packed,
    read_packed,
    train_reply,
)
from fedvla.engine.federation.strategy import make_strategy
from fedvla.engine.federation.transport import pack_record

COMMAND = ".venv/bin/python bench/aggregation.py"
TARGET_FRACTION_OF_BOUND = 0.5
MEMORY_MARGIN_BYTES = 2 * 2**30
"""Left free for the rest of the machine (other processes share it)."""
WORKING_COPIES = 4
"""Beyond the N inputs: Flower's accumulator, its per-client temporary, the result's bytes."""


def trainable_shapes(scale: float) -> dict[str, tuple[int, ...]]:
    """smolvla_base's trainable parameter shapes (meta device: nothing allocated).

    scale < 1 shrinks every shape's first dimension (for smoke tests).
    """
    import torch
    from comm_bytes import smolvla_base_config, smolvlm2_folder
    from lerobot.policies.smolvla import SmolVLAPolicy

    from fedvla.engine.policy.loading import trainable_state

    with tempfile.TemporaryDirectory() as scratch:
        config = smolvla_base_config(smolvlm2_folder(Path(scratch) / "smolvlm2"))
        with torch.device("meta"):
            policy = SmolVLAPolicy(config)
    shapes = {k: tuple(v.shape) for k, v in trainable_state(policy).items()}
    if scale < 1:
        shapes = {k: (max(1, int(s[0] * scale)), *s[1:]) if s else s for k, s in shapes.items()}
    return shapes


def client_reply(index: int, shapes: dict[str, tuple[int, ...]], samples: int) -> Message:
    """A train reply as the engine's ClientApp sends it, with random float32 weights."""
    from flwr.supercore.task_identity import TaskIdentity

    # Messages take their run id from the process's task identity, set by Flower's runtime.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    rng = np.random.default_rng(index)
    arrays: OrderedDict[str, Array] = OrderedDict()
    for key, shape in shapes.items():
        arrays[key] = Array(rng.standard_normal(shape, dtype=np.float32))
    record = ArrayRecord(arrays)
    metrics = TrainMetrics(
        train_loss=1.0,
        num_examples=samples,
        steps=10,
        episodes=5,
        seconds=1.0,
        load_seconds=0.0,
        skipped_frames=0,
        bytes_received=record.count_bytes(),
        bytes_sent=record.count_bytes(),
    )
    instruction = Message(RecordDict(), dst_node_id=index + 1, message_type="train")
    packed = pack_record(record, "float32")  # as a client sends it: one Array
    return Message(train_reply(packed, metrics, f"c{index}"), reply_to=instruction)


def float_views(reply: Message) -> list[np.ndarray]:
    """The reply's arrays as float32 views of the bytes it holds (no copy)."""
    views = []
    record = reply.content["arrays"]
    assert isinstance(record, ArrayRecord)
    for array in record.values():
        count = int(np.prod(array.shape))
        data = array.data
        views.append(np.frombuffer(data, dtype=np.float32, offset=len(data) - 4 * count))
    return views


def streaming_add(replies: list[Message]) -> list[np.ndarray]:
    """The bound: one pass over every input, accumulated in place."""
    per_client = [float_views(r) for r in replies]
    totals = [v.copy() for v in per_client[0]]
    for views in per_client[1:]:
        for total, view in zip(totals, views, strict=True):
            np.add(total, view, out=total)
    return totals


def engine_aggregate(replies: list[Message]) -> ArrayRecord:
    dataset = DatasetRef(repo_id="bench/none")
    config = FederationConfig(
        policy="tiny",
        min_clients=1,
        partition=Partition(dataset=dataset, num_clients=len(replies)),
    )
    strategy = make_strategy(config, round_offset=0)
    strategy.log.sampled = [r.metadata.src_node_id for r in replies]
    updates = [read_packed(r.content, ARRAYS_KEY, "train reply") for r in replies]
    arrays, _ = strategy.aggregate_train(1, replies)
    for reply, update in zip(replies, updates, strict=True):
        put_packed(reply.content, ARRAYS_KEY, update)  # the engine empties each one it sums
    assert arrays is not None
    return arrays


def flower_aggregate(replies: list[Message]) -> ArrayRecord:
    arrays, _ = FedAvg(min_available_nodes=1, min_train_nodes=1).aggregate_train(1, replies)
    assert arrays is not None
    return arrays


METHODS: dict[str, Callable[[list[Message]], Any]] = {
    "bound": streaming_add,
    "engine": engine_aggregate,
    "flower": flower_aggregate,
}


def timed(replies: list[Message], repeats: int) -> dict[str, list[float]]:
    """Seconds per method, the methods taking turns in each repeat (load drifts alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(repeats):
        for name, function in METHODS.items():
            gc.collect()
            started = time.perf_counter()
            result = function(replies)
            seconds[name].append(time.perf_counter() - started)
            del result
    return seconds


def check_same_average(replies: list[Message]) -> float:
    """Largest difference between the engine's average and numpy's (weights equal)."""
    engine = engine_aggregate(replies)
    expected = np.concatenate([t / len(replies) for t in streaming_add(replies)])
    averaged = np.concatenate([a.numpy().ravel() for a in engine.values()])
    return float(np.max(np.abs(averaged - expected)))


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, quick=False)
    parser.add_argument("--clients", default="2,4,8,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="<1 shrinks shapes (smoke)")
    args = parser.parse_args(argv)
    recorder = Recorder(
        "aggregation",
        "Seconds to FedAvg N client updates of smolvla_base's trainable parameters: the "
        "engine's aggregation vs Flower's stock FedAvg vs a streaming numpy add (bound).",
        COMMAND + (f" --scale {args.scale}" if args.scale < 1 else ""),
    )
    shapes = trainable_shapes(args.scale)
    update_bytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
    available = available_memory_bytes()
    fits = (available - MEMORY_MARGIN_BYTES) // update_bytes - WORKING_COPIES
    wanted = sorted(int(n) for n in args.clients.split(","))
    counts = [n for n in wanted if n <= fits]
    skipped = [n for n in wanted if n > fits]
    print(f"update {update_bytes / 2**20:.1f} MiB; {available / 2**30:.1f} GiB free; N {counts}")
    replies: list[Message] = []
    rows, results = [], []
    for n in counts:
        while len(replies) < n:
            replies.append(client_reply(len(replies), shapes, samples=80))
        subset = replies[:n]
        samples = timed(subset, args.repeats)
        bound_s, engine_s, flower_s = (median(samples[name]) for name in METHODS)
        input_bytes = n * update_bytes
        entry = {
            "clients": n,
            "input_bytes": input_bytes,
            "seconds": {name: [round(v, 4) for v in values] for name, values in samples.items()},
            "bound_seconds": round(bound_s, 4),
            "engine_seconds": round(engine_s, 4),
            "flower_seconds": round(flower_s, 4),
            "bound_gib_per_s": round(input_bytes / bound_s / 2**30, 2),
            "engine_gib_per_s": round(input_bytes / engine_s / 2**30, 2),
            "flower_gib_per_s": round(input_bytes / flower_s / 2**30, 2),
            "engine_fraction_of_bound": round(bound_s / engine_s, 3),
            "engine_vs_flower": round(flower_s / engine_s, 3),
            "meets_half_bound": bound_s / engine_s >= TARGET_FRACTION_OF_BOUND,
            "no_slower_than_flower": engine_s <= flower_s,
        }
        results.append(entry)
        print(json.dumps(entry))
        rows.append(
            [
                n,
                f"{input_bytes / 2**30:.2f}",
                entry["bound_seconds"],
                entry["engine_seconds"],
                entry["flower_seconds"],
                entry["engine_fraction_of_bound"],
                entry["engine_vs_flower"],
                entry["meets_half_bound"],
                entry["no_slower_than_flower"],
            ]
        )
    max_error = check_same_average(replies[:2]) if len(replies) >= 2 else None
    table = markdown_table(
        [
            "N",
            "input GiB",
            "bound s",
            "engine s",
            "Flower stock s",
            "engine / bound speed",
            "engine speed / Flower's",
            "≥ half bound",
            "no slower than Flower",
        ],
        rows,
    )
    if skipped:
        table += f"\nNot run (would not fit in free memory): N = {skipped}\n"
    table += (
        "\nThe engine averages with fedvla/engine/federation/aggregation.py (reads each update "
        "in place, "
        "sums cache-sized blocks across clients, one copy for the result); Flower's stock "
        "aggregate_arrayrecords deserialises, scales and adds each update separately. The bound "
        'adds in place without weights or a result to serialise. "Speed" = input bytes / s.\n'
    )
    recorder.write(
        {
            "update_params": update_bytes // 4,
            "update_bytes": update_bytes,
            "available_memory_bytes_at_start": available,
            "repeats": args.repeats,
            "skipped_clients_for_memory": skipped,
            "engine_vs_numpy_max_abs_difference": max_error,
            "results": results,
            "target": {
                "fraction_of_bound_min": TARGET_FRACTION_OF_BOUND,
                "met_half_bound": all(r["meets_half_bound"] for r in results),
                "met_no_slower_than_flower": all(r["no_slower_than_flower"] for r in results),
            },
        },
        table,
        out_dir=args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

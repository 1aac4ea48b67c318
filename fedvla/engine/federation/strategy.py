"""Flower's strategies with narrow hooks: transport dtype, round offset (resume), bookkeeping.

The hooks wrap configure_train, aggregate_train, configure_evaluate and aggregate_evaluate;
Flower's round loop, sampling, reply checks, metric aggregation and server optimisers (FedAdam,
FedAvgM's momentum) are used as they are. Federated evaluation runs on the evaluation rounds only
(`evaluates`), at the clients that keep held-out episodes, and its replies are read here (per
client, and averaged by samples). The weighted average of the arrays ("num-examples": samples
actually trained) is aggregation.py's: within float rounding of Flower's, summed as the replies
arrive, in a fixed
client order.
"""

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from fedvla.core.experiment_config import FederationConfig, Strategy
from fedvla.engine.data.partition import client_holdout
from fedvla.engine.federation.aggregation import PackedRunningAverage
from fedvla.engine.federation.protocol import (
    ARRAYS_KEY,
    add_train_payload,
    drop_packed,
    put_packed,
    read_evaluate_reply,
    read_packed,
    read_train_reply,
)
from fedvla.engine.federation.reporter import ClientEval, ClientReport
from fedvla.engine.federation.transport import (
    PackedArrays,
    as_float,
    pack_record,
    ray_carries_messages,
    to_float32_packed,
)


@dataclass
class RoundLog:
    """What the hooks saw during one round, read when the round is reported."""

    started: float = field(default_factory=time.perf_counter)
    sampled: list[int] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    """The round's train messages: their ids (set when the grid pushes them) name the node an
    error reply from the SuperLink itself (a node lost mid-round) stands for."""
    bytes_sent: int = 0
    clients: list[ClientReport] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)
    """Nodes whose reply (or error) has arrived."""
    evaluations: list[ClientEval] = field(default_factory=list)
    """Federated evaluation: each client's result on its own held-out episodes."""
    eval_errors: list[str] = field(default_factory=list)
    """Clients whose evaluation failed (the round goes on without them)."""
    eval_sent: list[Message] = field(default_factory=list)


def label_order(label: str) -> list[str | int]:
    """The key clients are sent to and summed in: their labels with numbers compared as numbers
    (client-2 before client-10), the order Flower's simulation hands the messages to the actors
    (by partition). Sorted as text, client-10 would come before client-2: its reply would wait
    for those of client-2 to client-9, and the server would hold a round's replies by the dozen.
    """
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


class TrackedStrategy(FedAvg):
    """Our hooks on FedAvg. Each concrete strategy below lists it first in its bases, so its
    configure_train and aggregate_train wrap those of the Flower strategy listed next."""

    round_offset: int = 0
    transport_dtype: str = "float32"
    labels: dict[int, str]
    norm_stats: PackedArrays | None = None
    """Federated normalisation statistics, sent with every train message when set."""
    site_ids: dict[int, int]
    node_names: Callable[[int], str | None]
    """Labels of nodes that joined after the clients were described (a re-keyed site)."""
    log: RoundLog
    evaluates: Callable[[int], bool]
    """Whether a round (counted from the experiment's start) is an evaluation round."""
    no_eval_nodes: set[int]
    """Nodes that keep no held-out episodes: not sent evaluate messages."""

    def setup_tracking(self, *, round_offset: int, transport_dtype: str) -> None:
        self.round_offset = round_offset
        self.transport_dtype = transport_dtype
        self.labels = {}
        self.site_ids = {}
        self.node_names = lambda node: None
        self.log = RoundLog()
        self.evaluates = lambda server_round: False
        self.no_eval_nodes = set()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.log = RoundLog()
        messages = sorted(  # the order replies are summed in (see _in_label_order)
            super().configure_train(
                server_round + self.round_offset,
                arrays,
                config,
                SampledOnce(grid),  # type: ignore[arg-type]
            ),
            key=lambda m: self._order(m.metadata.dst_node_id),
        )
        if not messages:
            return messages
        payload = self._payload(arrays)
        for message in messages:
            add_train_payload(message.content, payload, self.norm_stats)
            self.log.sampled.append(message.metadata.dst_node_id)
            self.log.sent.append(message)
            self.log.bytes_sent += payload.count_bytes()
        return messages

    def _payload(self, arrays: ArrayRecord) -> PackedArrays:
        payload = pack_record(arrays, self.transport_dtype)  # one Array on the wire
        return payload.in_object_store() if ray_carries_messages() else payload

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.evaluates(server_round + self.round_offset):
            return []
        messages = [
            m
            for m in super().configure_evaluate(
                server_round + self.round_offset,
                arrays,
                config,
                SampledOnce(grid),  # type: ignore[arg-type]
            )
            if m.metadata.dst_node_id not in self.no_eval_nodes
        ]
        if messages:
            payload = self._payload(arrays)
            for message in messages:
                add_train_payload(message.content, payload, self.norm_stats)
                self.log.bytes_sent += payload.count_bytes()
        self.log.eval_sent = messages
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Each client's evaluation, kept for the round's report; their average by samples."""
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self.log.eval_sent}
        for reply in sorted(replies, key=lambda r: self._order(r.metadata.src_node_id)):
            node = reply.metadata.src_node_id
            if node not in sent_to.values():
                node = sent_to.get(reply.metadata.reply_to_message_id, node)
            label = self._label(node)
            if reply.has_error():
                self.log.eval_errors.append(f"{label}: {reply.error.reason}")
                continue
            metrics = read_evaluate_reply(reply.content)
            if not (math.isfinite(metrics.eval_loss) and math.isfinite(metrics.action_mse)):
                self.log.eval_errors.append(
                    f"{label}: its evaluation is not finite (left out of the average)"
                )
            elif metrics.num_examples > 0:
                self.log.evaluations.append(
                    ClientEval(
                        client=label,
                        site_id=self.site_ids.get(node),
                        eval_loss=metrics.eval_loss,
                        action_mse=metrics.action_mse,
                        samples=metrics.num_examples,
                    )
                )
        total = federated_eval(self.log.evaluations)
        if total is None:
            return None
        return MetricRecord(
            {
                "eval-loss": total.eval_loss,
                "action-mse": total.action_mse,
                "num-examples": total.samples,
            }
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # `replies` may be a stream (StreamingGrid): each is reported as it arrives, and passed on
        # in a fixed client order so that the running sum is reproducible.
        ordered = self._in_label_order(replies)
        aggregated = super().aggregate_train(server_round + self.round_offset, ordered)
        for _ in ordered:  # a strategy that returned early leaves replies to report
            pass
        for node in self.log.sampled:
            if node not in self.log.answered:
                self.log.clients.append(
                    ClientReport(
                        client=self._label(node),
                        site_id=self.site_ids.get(node),
                        ok=False,
                        error="no reply in time",
                    )
                )
        return aggregated

    def _in_label_order(self, replies: Iterable[Message]) -> Iterator[Message]:
        """The replies, each reported on arrival, in the order of their clients' labels
        (label_order).

        A reply that arrives before those of clients earlier in that order waits for them (or
        for the end of the round, if one never comes); clients train in about that order
        (configure_train sends in it), so few wait.
        """
        order = sorted(self.log.sampled, key=self._order)
        position = {node: index for index, node in enumerate(order)}
        waiting: dict[int, Message] = {}
        unexpected: list[Message] = []
        due = 0
        for reply in replies:
            node = self._node_of(reply)
            self._report(node, reply)
            index = position.get(node)
            if index is None or index < due or index in waiting:
                unexpected.append(reply)
                continue
            waiting[index] = reply
            while due in waiting:
                yield waiting.pop(due)
                due += 1
        for index in sorted(waiting):
            yield waiting.pop(index)
        yield from sorted(unexpected, key=lambda r: self._order(self._node_of(r)))

    def _report(self, node: int, reply: Message) -> None:
        label = self._label(node)
        self.log.answered.add(node)
        if reply.has_error():
            self.log.clients.append(
                ClientReport(
                    client=label,
                    site_id=self.site_ids.get(node),
                    ok=False,
                    error=reply.error.reason,
                )
            )
            return
        payload, metrics = read_train_reply(reply.content)
        self.log.clients.append(
            ClientReport(
                client=label,
                site_id=self.site_ids.get(node),
                ok=True,
                train_loss=metrics.train_loss,
                samples=metrics.num_examples,
                episodes=metrics.episodes,
                seconds=metrics.seconds,
                load_seconds=metrics.load_seconds,
                bytes_sent=payload.count_bytes(),
                bytes_received=metrics.bytes_received,
                skipped_frames=metrics.skipped_frames,
            )
        )
        converted = to_float32_packed(payload, self.transport_dtype)
        if converted is not payload:
            drop_packed(reply.content, ARRAYS_KEY)  # the update as it came: gone now
            put_packed(reply.content, ARRAYS_KEY, converted)

    def _label(self, node: int) -> str:
        return self.labels.get(node) or self.node_names(node) or f"node-{node}"

    def _order(self, node: int) -> list[str | int]:
        return label_order(self._label(node))

    def _node_of(self, reply: Message) -> int:
        """The node a reply answers for: its source, or, for an error the SuperLink wrote
        itself (source: the SuperLink's own id), the node the message it answers went to."""
        node = reply.metadata.src_node_id
        if node in self.log.sampled:
            return node
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self.log.sent}
        return sent_to.get(reply.metadata.reply_to_message_id, node)

    def server_state(self) -> dict[str, np.ndarray]:
        """Strategy state that a resumed run needs (FedAdam's moments)."""
        return {}

    def restore_server_state(self, state: dict[str, np.ndarray]) -> None:
        return None


def federated_eval(evaluations: list[ClientEval]) -> ClientEval | None:
    """The clients' evaluations averaged, each weighted by the samples it evaluated."""
    samples = sum(e.samples for e in evaluations)
    if samples == 0:
        return None
    return ClientEval(
        client="federated",
        site_id=None,
        eval_loss=sum(e.eval_loss * e.samples for e in evaluations) / samples,
        action_mse=sum(e.action_mse * e.samples for e in evaluations) / samples,
        samples=samples,
    )


class SampledOnce:
    """The grid as Flower's FedAvg.configure_train reads it for one round.

    It reads the nodes twice, to size the sample and to draw it, and waits, unbounded, until
    there are as many as the first read counted: a node that left in between (a site revoked
    at that moment) would hold the round forever. Here both reads answer the same nodes; the
    reads after them (Flower waiting for min_available_nodes) are live. A node that left gets
    its message and, having no node to take it, counts as that round's failed client.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.reads = 0
        self.first: list[int] = []

    def get_node_ids(self) -> list[int]:
        self.reads += 1
        if self.reads == 1:
            self.first = list(self.grid.get_node_ids())
        return self.first if self.reads <= 2 else list(self.grid.get_node_ids())


class WeightedAverage(FedAvg):
    """FedAvg.aggregate_train with aggregation.PackedRunningAverage in place of Flower's average,
    over the replies' packed float32 updates (TrackedStrategy converts them on arrival); the
    average it returns has one Array per key, as the strategy's arrays always do.

    The replies are read one at a time: each update is added to the running sum and dropped
    from its reply before the next is read, so a round's memory does not grow with its clients
    when the replies come as a stream. Flower's checks and metric aggregation run on the replies
    without their arrays. Listed after the strategy in the bases, so FedAdam's aggregate_train
    (which averages through super() and then applies its server optimiser) reaches it too.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        average = PackedRunningAverage()
        read: list[Message] = []
        for reply in replies:
            if not reply.has_error():
                content = reply.content
                validate_message_reply_consistency(
                    [content], weighted_by_key=self.weighted_by_key, check_arrayrecord=True
                )
                metrics = next(iter(content.metric_records.values()))
                update = read_packed(content, ARRAYS_KEY, "train reply")
                average.add(update, as_float(metrics[self.weighted_by_key]))
                drop_packed(content, ARRAYS_KEY)
            read.append(reply)
        valid, _ = self._check_and_log_replies(read, is_train=True, validate=False)
        if not valid:
            return None, None
        contents = [reply.content for reply in valid]
        validate_message_reply_consistency(
            contents, weighted_by_key=self.weighted_by_key, check_arrayrecord=False
        )
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return average.result(), metrics


class TrackedFedAvg(TrackedStrategy, WeightedAverage):
    pass


class TrackedFedProx(TrackedStrategy, FedProx, WeightedAverage):
    pass


class TrackedFedAdam(TrackedStrategy, FedAdam, WeightedAverage):
    def server_state(self) -> dict[str, np.ndarray]:
        state = {f"m_t|{k}": np.asarray(v) for k, v in (self.m_t or {}).items()}
        state.update({f"v_t|{k}": np.asarray(v) for k, v in (self.v_t or {}).items()})
        return state

    def restore_server_state(self, state: dict[str, np.ndarray]) -> None:
        self.m_t = {k.split("|", 1)[1]: v for k, v in state.items() if k.startswith("m_t|")}
        self.v_t = {k.split("|", 1)[1]: v for k, v in state.items() if k.startswith("v_t|")}


class TrackedFedAvgM(TrackedStrategy, FedAvgM, WeightedAverage):
    """Flower's FedAvgM: the average's step from the global weights, with momentum, applied at
    the server learning rate `server_step` (Hsu et al., 2019)."""

    def server_state(self) -> dict[str, np.ndarray]:
        if self.momentum_vector is None or self.current_arrays is None:
            return {}
        names = list(self.current_arrays.keys())
        return {
            f"momentum|{index:06d}|{name}": np.asarray(value)
            for index, (name, value) in enumerate(zip(names, self.momentum_vector, strict=True))
        }

    def restore_server_state(self, state: dict[str, np.ndarray]) -> None:
        kept = sorted(k for k in state if k.startswith("momentum|"))
        self.momentum_vector = [state[k] for k in kept] or None


StrategyFactory = Callable[[FederationConfig, dict[str, Any]], TrackedStrategy]
"""Builds a strategy from the config and the arguments every strategy takes."""

STRATEGIES: dict[Strategy, StrategyFactory] = {
    Strategy.fedavg: lambda config, common: TrackedFedAvg(**common),
    Strategy.fedprox: lambda config, common: TrackedFedProx(
        proximal_mu=config.proximal_mu, **common
    ),
    Strategy.fedadam: lambda config, common: TrackedFedAdam(
        eta=config.server_learning_rate, **common
    ),
    Strategy.fedavgm: lambda config, common: TrackedFedAvgM(
        server_momentum=config.server_momentum,
        server_learning_rate=config.server_step,
        **common,
    ),
}
"""Every strategy an experiment may name (fedvla.core.experiment_config.Strategy), by name."""


def make_strategy(config: FederationConfig, *, round_offset: int) -> TrackedStrategy:
    common: dict[str, Any] = {
        "fraction_train": config.fraction_train,
        # Every node is asked to evaluate on an evaluation round; configure_evaluate leaves out
        # the rounds between and the nodes that keep nothing back.
        "fraction_evaluate": 1.0 if client_holdout(config) > 0 else 0.0,
        "min_train_nodes": config.min_clients,
        "min_available_nodes": config.min_clients,
        "min_evaluate_nodes": 0,
    }
    strategy = STRATEGIES[config.strategy](config, common)
    strategy.setup_tracking(round_offset=round_offset, transport_dtype=config.transport_dtype)
    return strategy

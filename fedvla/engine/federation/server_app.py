"""The Flower ServerApp: ask the clients who they are, then run the strategy round by round.

After each round (and before the first) the evaluate_fn hook evaluates the aggregated policy
on the server's held-out data at the configured cadence, writes checkpoints and calls the
reporter; the round's federated evaluation (the clients' own held-out episodes, asked by the
strategy just before) is reported with it, separately. Every ServerApp of the engine
(`flwr run .`, the simulation runner, the SuperLink's) is made by federation_server_app: they
differ only in how they set up a ServerRun.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedvla.core.experiment_config import FederationConfig
from fedvla.engine.data.features import DatasetError, DatasetFeatures, check_dataset
from fedvla.engine.data.partition import DataPlan, plan_data
from fedvla.engine.data.stats import Stats
from fedvla.engine.federation import checkpoints, task
from fedvla.engine.federation.protocol import (
    ClientInfo,
    Instructions,
    instructions_record,
    query_message,
    read_client_info,
)
from fedvla.engine.federation.reporter import (
    ClientEval,
    ClientReport,
    JsonLinesReporter,
    Reporter,
    RoundReport,
)
from fedvla.engine.federation.run_config import federation_config_from_run_config
from fedvla.engine.federation.strategy import (
    RoundLog,
    TrackedStrategy,
    federated_eval,
    make_strategy,
)
from fedvla.engine.federation.streaming_grid import DEFAULT_PULL_INTERVAL_S, StreamingGrid
from fedvla.engine.federation.transport import decode_arrays, encode_arrays, stats_to_record
from fedvla.engine.freed_memory import release_freed_memory
from fedvla.engine.policy.loading import resolve_policy_source

QUERY_TIMEOUT_S = 3600.0


class FederationError(RuntimeError):
    """The federation cannot go on (bad input found by the clients, too few clients)."""


@dataclass(frozen=True)
class ServerRun:
    """What a ServerApp settles before its federation starts."""

    grid: Grid
    config: FederationConfig
    reporter: Reporter
    output_dir: Path
    data_dir: Path
    plan: DataPlan | None = None
    """The data plan if the caller has made it already; else run_server makes it."""
    node_names: Callable[[int], str | None] | None = None
    """Labels of nodes that join after the clients were described (deployment: a re-keyed
    site's new node); None: such nodes are labelled node-<id>."""
    reply_pull_interval_s: float = DEFAULT_PULL_INTERVAL_S
    """How often a round looks for its clients' replies."""
    max_in_flight: int | None = None
    """Messages of a round pushed and not yet answered, at most (StreamingGrid); None: all at
    once (deployment: the sites train at the same time)."""


RunSetup = Callable[[Grid, Context], AbstractContextManager[ServerRun]]
"""Sets up a run from Flower's grid and context, and cleans up when the federation ends."""


def federation_server_app(setup: RunSetup) -> ServerApp:
    """A ServerApp whose main runs the federation that `setup` describes."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        with setup(grid, context) as run:
            run_server(run)

    return app


def _merged_stats(clients: dict[int, ClientInfo], reporter: Reporter) -> Stats:
    """Every client's statistics merged, less those that are not finite: a client whose data
    holds NaN or infinity would otherwise make every client normalise into NaN. Such a client
    still trains (and fails alone, its loss diverging); the log names it."""
    finite = {
        c.label: c.stats
        for c in clients.values()
        if all(
            np.isfinite(np.asarray(v, dtype=np.float64)).all()
            for f in c.stats.values()
            for v in f.values()
        )
    }
    for c in clients.values():
        if c.label not in finite:
            reporter.log(
                f"{c.label}: its statistics are not finite (NaN or infinite values in its "
                "data): left out of the merge"
            )
    if not finite:
        raise FederationError(
            "no client's statistics are finite: every dataset holds NaN or infinite values"
        )
    return task.merge_stats(list(finite.values()))


def run_server(run: ServerRun) -> None:
    config, reporter = run.config, run.reporter
    plan = run.plan if run.plan is not None else plan_data(config)
    instructions = Instructions(config, str(run.data_dir.resolve()), plan)
    source = resolve_policy_source(config.policy)
    clients = _describe_clients(run.grid, config, instructions)
    reporter.log(
        "clients: " + ", ".join(f"{c.label} ({c.frames} frames)" for c in clients.values())
    )
    merged = _merged_stats(clients, reporter)
    first = next(iter(clients.values()))
    bundle = task.build_bundle(
        source,
        first.features,
        stats=merged,
        data_dir=run.data_dir,
        seed=config.seed,
        device=task.pick_device(config.device),
    )
    holdout = _holdout_data(plan, bundle, first.dataset_features)
    offset = 0
    if config.resume_from is not None:
        offset = config.resume_from.round
        if offset >= config.num_rounds:
            raise FederationError(
                f"resume_from round {offset} is not before the last round {config.num_rounds}"
            )
        resumed = _resume(config, bundle)
    strategy = make_strategy(config, round_offset=offset)
    strategy.labels = {node: c.label for node, c in clients.items()}
    strategy.no_eval_nodes = {node for node, c in clients.items() if c.eval_frames == 0}
    strategy.site_ids = {node: c.site_id for node, c in clients.items() if c.site_id is not None}
    if run.node_names is not None:
        strategy.node_names = run.node_names
    if config.resume_from is not None:
        strategy.restore_server_state(resumed)
    hooks = _RoundHooks(config, reporter, strategy, bundle, holdout, run.output_dir, offset)
    strategy.evaluates = hooks.evaluates
    _log_evaluation(config, clients, holdout, reporter)
    initial = encode_arrays(task.trainable_arrays(bundle), "float32")
    if config.normalization == "federated":
        # Every client normalises with the merged statistics, sent on purpose with each round.
        strategy.norm_stats = stats_to_record(merged)
    strategy.start(
        # replies summed on arrival, and (simulation) only a few pushed ahead of the sum
        grid=StreamingGrid(run.grid, run.reply_pull_interval_s, run.max_in_flight),
        initial_arrays=initial,
        num_rounds=config.num_rounds - offset,
        train_config=instructions_record(instructions),
        evaluate_config=instructions_record(instructions),
        evaluate_fn=hooks,
    )
    reporter.log(f"federation finished after round {config.num_rounds}")


def _log_evaluation(
    config: FederationConfig,
    clients: dict[int, ClientInfo],
    holdout: list[task.ClientData],
    reporter: Reporter,
) -> None:
    """Say once what this run evaluates, and on how many frames."""
    if config.eval_every == 0:
        reporter.log("evaluation is off (eval_every 0): checkpoints kept are the last ones")
        return
    server = sum(len(d.dataset) for d in holdout)
    held = {c.label: c.eval_frames for c in clients.values()}
    reporter.log(
        f"server evaluation: {server} held-out frames"
        if server
        else "server evaluation: none (no held-out episodes nor eval_datasets)"
    )
    reporter.log(
        "federated evaluation: "
        + (
            ", ".join(f"{label} {frames} held-out frames" for label, frames in held.items())
            if any(held.values())
            else "none (no client keeps episodes back)"
        )
    )


def _describe_clients(
    grid: Grid, config: FederationConfig, instructions: Instructions
) -> dict[int, ClientInfo]:
    """Query every client; check that their datasets agree; fail naming the odd one out."""
    nodes = _wait_for_nodes(
        grid, config.num_clients if config.mode == "simulation" else config.min_clients
    )
    messages = [query_message(node, instructions) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=QUERY_TIMEOUT_S))
    errors = [r.error.reason or "" for r in replies if r.has_error()]
    if errors:
        raise DatasetError("; ".join(_short(e) for e in errors))
    described = [(r.metadata.src_node_id, read_client_info(r.content)) for r in replies]
    clients: dict[int, ClientInfo] = {}
    expected: DatasetFeatures | None = None
    for node, info in sorted(described, key=lambda pair: pair[1].label):
        found = info.dataset_features
        if expected is None:
            expected = found
        elif mismatches := expected.mismatches(found):
            raise DatasetError(
                f"{info.label}: dataset {info.dataset.model_dump_json()} does not match the "
                "experiment: " + "; ".join(mismatches)
            )
        clients[node] = info
    return clients


def _short(reason: str) -> str:
    """The last line of a client's traceback: the error itself."""
    lines = [line for line in reason.strip().splitlines() if line.strip()]
    return lines[-1] if lines else reason


def _wait_for_nodes(grid: Grid, count: int) -> list[int]:
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() > deadline:
            return nodes
        time.sleep(1.0)


def _holdout_data(
    plan: DataPlan, bundle: task.PolicyBundle, expected: DatasetFeatures
) -> list[task.ClientData]:
    data = []
    for ref in plan.holdout:
        check_dataset(ref, "server evaluation", expected)
        data.append(
            task.open_dataset(
                ref,
                chunk_size=bundle.policy.config.chunk_size,
                owner="server evaluation",
                with_stats=False,
            )
        )
    return data


def _resume(config: FederationConfig, bundle: task.PolicyBundle) -> dict[str, Any]:
    from safetensors.torch import load_file

    assert config.resume_from is not None
    folder = Path(config.resume_from.checkpoint_dir)
    weights = folder / checkpoints.PRETRAINED_DIR / checkpoints.WEIGHTS_FILE
    if not weights.is_file():
        raise FederationError(f"resume_from: no checkpoint at {weights}")
    state = load_file(weights)
    trainable = task.trainable_arrays(bundle)
    task.load_trainable(bundle, {k: state[k] for k in trainable})
    return checkpoints.load_server_state(folder)


class _RoundHooks:
    """The strategy's evaluate_fn: evaluate, checkpoint and report after each round."""

    def __init__(
        self,
        config: FederationConfig,
        reporter: Reporter,
        strategy: TrackedStrategy,
        bundle: task.PolicyBundle,
        holdout: list[task.ClientData],
        output_dir: Path,
        offset: int,
    ) -> None:
        self.config = config
        self.reporter = reporter
        self.strategy = strategy
        self.bundle = bundle
        self.holdout = holdout
        self.output_dir = output_dir
        self.offset = offset

    def __call__(self, strategy_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round = strategy_round + self.offset
        if strategy_round == 0 and self.offset > 0:
            return None  # the resumed round was evaluated and reported by the earlier run
        log = self.strategy.log if strategy_round > 0 else RoundLog()
        evaluates = bool(self.holdout) and self.evaluates(server_round)
        checkpoints_now = strategy_round > 0 and self._checkpoints(server_round)
        if evaluates or checkpoints_now:  # the server's policy is only read then
            task.load_trainable(self.bundle, decode_arrays(arrays, "float32"))
        server = self._evaluate() if evaluates else None
        for error in log.eval_errors:
            self.reporter.log(f"round {server_round}: federated evaluation failed at {error}")
        report = self._report(server_round, log, server)
        self.reporter.round_finished(report)
        if strategy_round > 0:
            self._check_enough(server_round, report)
        if checkpoints_now:
            # Best by the server's eval loss; by the federated one where the server has no data.
            best_by = report.eval_loss if self.holdout else report.fed_eval_loss
            self._checkpoint(server_round, best_by)
        self.strategy.log = RoundLog()
        release_freed_memory()  # the round's updates, freed by the threads that received them
        if server is None:
            return None
        return MetricRecord({"eval-loss": server.loss, "action-mse": server.action_mse})

    def evaluates(self, server_round: int) -> bool:
        """An evaluation round (the server's and the clients'): every eval_every rounds and
        after the last; never when eval_every is 0."""
        every = self.config.eval_every
        last = server_round == self.config.num_rounds
        return every > 0 and (server_round % every == 0 or last)

    def _checkpoints(self, server_round: int) -> bool:
        every = self.config.checkpoint_every
        last = server_round == self.config.num_rounds
        return last or (every > 0 and server_round % every == 0)

    def _evaluate(self) -> task.EvalResult:
        results = [
            task.evaluate(
                self.bundle,
                data,
                batches=self.config.eval_batches,
                batch_size=self.config.batch_size,
                seed=self.config.seed,
            )
            for data in self.holdout
        ]
        samples = sum(r.samples for r in results)
        return task.EvalResult(
            loss=sum(r.loss * r.samples for r in results) / samples,
            action_mse=sum(r.action_mse * r.samples for r in results) / samples,
            samples=samples,
        )

    def _report(
        self, server_round: int, log: RoundLog, server: task.EvalResult | None
    ) -> RoundReport:
        ok = [c for c in log.clients if c.ok]
        samples = sum(c.samples for c in ok)
        train_loss = (
            sum((c.train_loss or 0.0) * c.samples for c in ok) / samples if samples else None
        )
        federated = federated_eval(log.evaluations)
        return RoundReport(
            round=server_round,
            train_loss=train_loss,
            eval_loss=server.loss if server else None,
            eval_action_mse=server.action_mse if server else None,
            fed_eval_loss=federated.eval_loss if federated else None,
            fed_eval_action_mse=federated.action_mse if federated else None,
            fed_eval_samples=federated.samples if federated else 0,
            duration_s=time.perf_counter() - log.started,
            bytes_sent=log.bytes_sent,
            bytes_received=sum(c.bytes_sent for c in ok),
            clients_sampled=len(log.sampled),
            clients_succeeded=len(ok),
            clients_failed=len(log.clients) - len(ok),
            clients=_with_evaluations(log.clients, log.evaluations),
        )

    def _check_enough(self, server_round: int, report: RoundReport) -> None:
        if report.clients_succeeded < self.config.min_clients:
            errors = "; ".join(
                f"{c.client}: {_short(c.error or '')}" for c in report.clients if not c.ok
            )
            raise FederationError(
                f"round {server_round}: only {report.clients_succeeded} of the "
                f"{self.config.min_clients} clients needed answered ({errors})"
            )

    def _checkpoint(self, server_round: int, eval_loss: float | None) -> None:
        saved = checkpoints.save_checkpoint(
            self.output_dir,
            server_round,
            policy=self.bundle.policy,
            preprocessor=self.bundle.preprocessor,
            postprocessor=self.bundle.postprocessor,
            server_state=self.strategy.server_state(),
            eval_loss=eval_loss,
        )
        self.reporter.checkpoint_saved(saved)
        checkpoints.apply_retention(self.output_dir, self.config.keep_checkpoints, self.reporter)


def _with_evaluations(
    clients: list[ClientReport], evaluations: list[ClientEval]
) -> list[ClientReport]:
    """The round's clients, each with its federated evaluation; a client that evaluated but
    was not sampled to train this round is listed with its evaluation alone."""
    by_client = {e.client: e for e in evaluations}
    merged = [
        replace(
            c,
            eval_loss=by_client[c.client].eval_loss,
            eval_action_mse=by_client[c.client].action_mse,
            eval_samples=by_client[c.client].samples,
        )
        if c.client in by_client
        else c
        for c in clients
    ]
    trained = {c.client for c in clients}
    merged += [
        ClientReport(
            client=e.client,
            site_id=e.site_id,
            ok=True,
            eval_loss=e.eval_loss,
            eval_action_mse=e.action_mse,
            eval_samples=e.samples,
        )
        for e in evaluations
        if e.client not in trained
    ]
    return sorted(merged, key=lambda c: c.client)


@contextmanager
def _standalone(grid: Grid, context: Context) -> Iterator[ServerRun]:
    """`flwr run .`: the experiment from the run config; events to <output-dir>/events.jsonl."""
    config = federation_config_from_run_config(context.run_config)
    output_dir = Path(str(context.run_config.get("output-dir", "outputs"))).resolve()
    data_dir = Path(str(context.run_config.get("data-dir", output_dir / "data"))).resolve()
    reporter = JsonLinesReporter(output_dir / "events.jsonl")
    yield ServerRun(grid, config, reporter, output_dir=output_dir, data_dir=data_dir)


app = federation_server_app(_standalone)

"""The Flower ClientApp: turn messages into calls of `task` and replies.

Every message carries the server's instructions (protocol.Instructions: the frozen experiment
and the data plan), so a client needs no other configuration. Its dataset is the plan's entry
for its node_config "partition-id" (simulation) or comes from its node config (deployment:
"dataset-repo-id", optional "dataset-root").
"""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedvla.core.experiment_config import DatasetRef
from fedvla.engine.camera_map import NODE_CONFIG_KEY as CAMERA_MAP_KEY
from fedvla.engine.camera_map import parse_camera_map
from fedvla.engine.data.partition import client_holdout, client_label, client_split
from fedvla.engine.federation import task
from fedvla.engine.federation.protocol import (
    ClientInfo,
    EvalMetrics,
    Instructions,
    TrainMetrics,
    describe_reply,
    evaluate_reply,
    read_instructions,
    read_train_message,
    train_reply,
)
from fedvla.engine.federation.schedule import LearningRateSchedule
from fedvla.engine.federation.transport import pack_arrays, ray_carries_messages, unpack_arrays
from fedvla.engine.freed_memory import release_freed_memory
from fedvla.engine.policy.loading import resolve_policy_source
from fedvla.engine.renamed_cameras import apply_camera_map

app = ClientApp()
log = logging.getLogger(__name__)

OPTIMIZER_STATE_KEY = "optimizer-state"
"""Where a client keeps its AdamW state between rounds (optimizer_state "kept"): its node's
Flower context, which follows the client to whichever process serves it next and ends with the
run (a new or resumed run starts fresh)."""


@dataclass
class ClientState:
    """What a client keeps across rounds within one process (a Ray actor or forked process in
    simulation, the site trainer in deployment): its data, feed and processors. The policy in its
    bundle is the process's one shared policy."""

    label: str
    data: task.ClientData
    """The episodes it trains on (its statistics are theirs alone)."""
    eval_data: task.ClientData | None
    """Its own held-out episodes, for federated evaluation; None: it keeps none back."""
    bundle: task.PolicyBundle
    run_id: str
    """The Flower run it last served: a new run starts a new feed (its batches then do not
    depend on what the process trained before)."""
    fresh: bool = True
    """True until the first message has used it: its build time is then reported."""


_cache: dict[tuple[str, ...], ClientState] = {}
_policies: dict[tuple[str, ...], task.PolicyBundle] = {}
"""One policy per process, whichever of its clients a message is for: the frozen VLM is the same
for all of them, and every train message assigns the weights that train before the policy is
used, so a process's memory does not grow with its clients. It outlives the run: a later run of
the same policy, seed and features (a site's next run) finds it built."""
MAX_LIVE_FEEDS = 4
"""Clients per process whose loader worker processes stay alive between rounds."""
policies_built = 0
"""Policies this process has built (the site trainer logs it with each task)."""


def client_dataset(
    instructions: Instructions, context: Context
) -> tuple[str, DatasetRef, DatasetRef | None]:
    """This client's label, the episodes it trains on and those it keeps back to evaluate on.
    A site splits its own dataset (the same way the server plans a simulated client's)."""
    node = context.node_config
    if "dataset-repo-id" in node:
        root = node.get("dataset-root")
        ref = DatasetRef(repo_id=str(node["dataset-repo-id"]), root=str(root) if root else None)
        label = str(node.get("site-label", f"node-{context.node_id}"))
        config = instructions.federation
        train, held = client_split(ref, client_holdout(config), seed=config.seed, label=label)
        return label, train, held
    partition_id = int(node["partition-id"])
    plan = instructions.plan
    held = plan.client_eval[partition_id] if partition_id < len(plan.client_eval) else None
    return client_label(partition_id), plan.clients[partition_id], held


def client_state(instructions: Instructions, context: Context) -> ClientState:
    """This client's policy and dataset: built on the first message, then kept in the process,
    across runs too while the policy (source, seed, device) and the dataset stay the same."""
    global policies_built
    config = instructions.federation
    run_id = str(context.run_id)
    cameras = instructions.camera_map
    if cameras is None and CAMERA_MAP_KEY in context.node_config:  # a server that sends none
        cameras = parse_camera_map(str(context.node_config[CAMERA_MAP_KEY]))
    key = (
        json.dumps(context.node_config, sort_keys=True),
        config.model_dump_json(
            include={
                "policy",
                "seed",
                "device",
                "client_datasets",
                "partition",
                "client_holdout_fraction",
                "eval_every",
            }
        ),
        json.dumps(cameras, sort_keys=True),
    )
    state = _cache.get(key)
    if state is not None and state.run_id != run_id:
        # A new run: a new feed (seeded by the run's experiment), and the dataset's own statistics
        # until the run sends its federated ones.
        state.data.close()
        task.set_stats(state.bundle, state.data.stats)
        state.run_id = run_id
    if state is None:
        label, ref, held = client_dataset(instructions, context)
        data_dir = Path(str(context.node_config.get("data-dir", instructions.data_dir)))
        torch.set_num_threads(max(1, int(config.client_num_cpus)))
        source = resolve_policy_source(config.policy)
        chunk = _chunk_size(source, data_dir)
        data = task.open_dataset(ref, chunk_size=chunk, owner=label)
        eval_data = None
        if held is not None:
            eval_data = task.open_dataset(
                held, chunk_size=chunk, owner=f"{label} (held out)", with_stats=False
            )
        if cameras:  # deployment: the site's cameras renamed to the experiment's
            data = apply_camera_map(data, cameras)
            eval_data = apply_camera_map(eval_data, cameras) if eval_data is not None else None
        policy_key = (
            config.model_dump_json(include={"policy", "seed", "device"}),
            json.dumps(data.features, sort_keys=True),
        )
        # A process serves every client it is handed (more clients than processes is common):
        # it frees the clients and the policy of another policy, and shares one among the rest.
        for stale in [k for k in _policies if k != policy_key]:
            del _policies[stale]
        for stale in [k for k, s in _cache.items() if s.bundle.policy not in _live_policies()]:
            _cache.pop(stale).data.close()
        shared = _policies.get(policy_key)
        if shared is None:
            shared = task.build_bundle(
                source,
                data.features,
                stats=data.stats,
                data_dir=data_dir,
                seed=config.seed,
                device=task.pick_device(config.device),
            )
            _policies[policy_key] = shared
            policies_built += 1
            log.info(
                "%s: built policy %s (%d built in this process)",
                label,
                config.policy,
                policies_built,
            )
            bundle = shared
        else:
            bundle = task.bundle_for(shared.policy, data.stats, shared.device)
        state = ClientState(label, data, eval_data, bundle, run_id)
        _cache[key] = state
    return state


def _live_policies() -> list[object]:
    return [bundle.policy for bundle in _policies.values()]


def _keep_feeds_bounded(current: ClientState) -> None:
    """Stop the loader workers of the clients least recently trained beyond MAX_LIVE_FEEDS."""
    live = [s for s in _cache.values() if s.data.feed is not None and s is not current]
    live.sort(key=lambda s: s.data.last_fed)
    for state in live[: max(0, len(live) + 1 - MAX_LIVE_FEEDS)]:
        state.data.close()


def _chunk_size(source: Any, data_dir: Path) -> int:
    from fedvla.engine.policy.loading import read_policy_config
    from fedvla.engine.policy.tiny import tiny_smolvla_config

    if source.is_tiny:
        return int(tiny_smolvla_config(data_dir, state_dim=1, action_dim=1).chunk_size)
    return int(read_policy_config(source).chunk_size)


def _take_load_seconds(state: ClientState) -> float:
    seconds = state.bundle.load_seconds if state.fresh else 0.0
    state.fresh = False
    return seconds


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Before training: who this client is, its dataset's features and statistics."""
    state = client_state(read_instructions(msg), context)
    site_id = int(context.node_config.get("site-id", -1))
    info = ClientInfo(
        label=state.label,
        site_id=site_id if site_id >= 0 else None,
        dataset=state.data.ref,
        features=state.data.features,
        fps=int(state.data.dataset.dataset.meta.fps),
        stats=state.data.stats,
        frames=len(state.data.dataset),
        eval_frames=len(state.eval_data.dataset) if state.eval_data is not None else 0,
    )
    return Message(describe_reply(info), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    instructions = read_instructions(msg)
    config = instructions.federation
    started = time.perf_counter()
    order = read_train_message(msg)
    state = client_state(instructions, context)
    task.load_trainable(state.bundle, unpack_arrays(order.arrays, config.transport_dtype))
    if order.stats is not None and state.bundle.stats is state.data.stats:
        task.set_stats(state.bundle, order.stats)
    load_seconds = _take_load_seconds(state) + (time.perf_counter() - started)
    kept = context.state.get(OPTIMIZER_STATE_KEY) if config.optimizer_state == "kept" else None
    _keep_feeds_bounded(state)
    first_step = LearningRateSchedule.first_step(order.server_round, config.local_steps)
    result = task.train(
        state.bundle,
        state.data,
        steps=config.local_steps,
        batch_size=config.batch_size,
        learning_rate=LearningRateSchedule.of(config),
        seed=task.round_seed(config.seed, order.server_round, state.label),
        proximal_mu=order.proximal_mu,
        first_step=first_step,
        optimizer_state=kept.to_torch_state_dict() if isinstance(kept, ArrayRecord) else None,
        # Batches by round, not by process: whichever process served the client's earlier
        # rounds (or none, after a resume), round r trains on the same batches.
        order_seed=task.client_seed(config.seed, state.label),
        first_batch=first_step,
    )
    if config.optimizer_state == "kept":
        context.state[OPTIMIZER_STATE_KEY] = ArrayRecord(result.optimizer_state)
    arrays = pack_arrays(task.trainable_arrays(state.bundle), config.transport_dtype)
    if ray_carries_messages():
        arrays = arrays.out_of_band()
    release_freed_memory()  # the update received, the optimiser's state: this client's alone
    metrics = TrainMetrics(
        train_loss=result.loss,
        num_examples=result.samples,
        steps=result.steps,
        episodes=state.data.episodes,
        seconds=result.seconds,
        load_seconds=load_seconds,
        skipped_frames=result.skipped_frames,
        bytes_received=order.arrays.count_bytes(),
        bytes_sent=arrays.count_bytes(),
    )
    return Message(train_reply(arrays, metrics, state.label), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation: the aggregated policy on this client's own held-out episodes,
    normalised as it trains (the federated statistics, or its own)."""
    instructions = read_instructions(msg)
    config = instructions.federation
    order = read_train_message(msg)
    state = client_state(instructions, context)
    if state.eval_data is None:
        metrics = EvalMetrics(eval_loss=0.0, action_mse=0.0, num_examples=0)
        return Message(evaluate_reply(metrics, state.label), reply_to=msg)
    task.load_trainable(state.bundle, unpack_arrays(order.arrays, config.transport_dtype))
    if order.stats is not None and state.bundle.stats is state.data.stats:
        task.set_stats(state.bundle, order.stats)
    result = task.evaluate(
        state.bundle,
        state.eval_data,
        batches=config.eval_batches,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    release_freed_memory()
    metrics = EvalMetrics(
        eval_loss=result.loss, action_mse=result.action_mse, num_examples=result.samples
    )
    return Message(evaluate_reply(metrics, state.label), reply_to=msg)

"""The ClientApp in this process, with hand-built Messages (as Flower's own strategy tests do)."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedvla.core.experiment_config import DatasetRef, FederationConfig
from fedvla.engine.data.partition import client_split, plan_data
from fedvla.engine.federation import client_app, task
from fedvla.engine.federation.protocol import (
    Instructions,
    add_train_payload,
    instructions_record,
    read_evaluate_reply,
    read_train_reply,
)
from fedvla.engine.federation.transport import (
    pack_arrays,
    stats_to_record,
    unpack_arrays,
    unpack_values,
)
from fedvla.engine.policy.loading import trainable_state
from tests.engine.helpers import tiny_bundle


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
    yield
    client_app._cache.clear()
    client_app._policies.clear()


def _config(dataset: DatasetRef, **changes: object) -> FederationConfig:
    return FederationConfig(
        policy="tiny",
        mode="deployment",
        site_ids=[1, 2],
        local_steps=2,
        batch_size=4,
        eval_batches=1,
        transport_dtype="bfloat16",
        **changes,  # type: ignore[arg-type]
    )


def _context(dataset: DatasetRef, data_dir: Path) -> Context:
    node_config = {
        "dataset-repo-id": dataset.repo_id,
        "dataset-root": str(dataset.root),
        "data-dir": str(data_dir),
        "site-label": "site-arm-1",
        "site-id": 3,
    }
    return Context(run_id=7, node_id=11, node_config=node_config, state=RecordDict(), run_config={})


def _instructions(config: FederationConfig, data_dir: str = "unused") -> Instructions:
    return Instructions(config, data_dir, plan_data(config))


def _message(
    config: FederationConfig, kind: str, server_round: int = 1, **records: object
) -> Message:
    settings = instructions_record(_instructions(config))
    settings["server-round"] = server_round  # as FedAvg's configure_train adds it
    content = RecordDict({"config": settings, **records})  # type: ignore[dict-item]
    return Message(content, dst_node_id=11, message_type=kind)


def _global_weights(data_dir: Path, dataset: DatasetRef) -> dict[str, object]:
    bundle, _data = tiny_bundle(data_dir, dataset, "server")
    return trainable_state(bundle.policy)  # type: ignore[return-value]


def test_query_describes_the_site_from_its_node_config(
    images_dataset: DatasetRef, data_dir: Path
) -> None:
    config = _config(images_dataset)
    reply = client_app.app(_message(config, MessageType.QUERY), _context(images_dataset, data_dir))
    info = reply.content["config"]
    assert isinstance(info, ConfigRecord)
    assert info["label"] == "site-arm-1" and info["fps"] == 30 and info["site-id"] == 3
    assert "observation.images.front" in str(info["features"])
    # The site keeps back a tenth of its 9 episodes (rounded up: 1) for federated evaluation.
    assert reply.content["metrics"]["num-examples"] == 8 * 16  # type: ignore[index]
    assert reply.content["metrics"]["eval-frames"] == 16  # type: ignore[index]


def test_a_site_evaluates_the_global_policy_on_its_own_held_out_episodes(
    images_dataset: DatasetRef, data_dir: Path
) -> None:
    """Deployment: the site splits its own dataset (seeded by experiment and site label), trains
    on the rest, and answers an evaluate message with loss and action error on the held-out."""
    config = _config(images_dataset)
    weights = _global_weights(data_dir, images_dataset)
    message = _message(config, MessageType.EVALUATE)
    add_train_payload(message.content, pack_arrays(weights, "bfloat16"), None)  # type: ignore[arg-type]
    reply = client_app.app(message, _context(images_dataset, data_dir))

    metrics = read_evaluate_reply(reply.content)
    assert metrics.num_examples == 4 and metrics.action_mse > 0 and metrics.eval_loss > 0
    state = next(iter(client_app._cache.values()))
    assert state.eval_data is not None and state.eval_data.stats == {}  # evaluated, not counted
    held = state.eval_data.ref.episodes or []
    trained = state.data.ref.episodes or []
    assert len(held) == 1 and not set(held) & set(trained) and len(trained) == 8
    same = client_split(images_dataset, 0.1, seed=config.seed, label="site-arm-1")
    assert same[1] is not None and same[1].episodes == held  # every process splits alike


def test_a_site_that_keeps_nothing_back_evaluates_nothing(
    images_dataset: DatasetRef, data_dir: Path
) -> None:
    config = _config(images_dataset, client_holdout_fraction=0.0)
    weights = _global_weights(data_dir, images_dataset)
    message = _message(config, MessageType.EVALUATE)
    add_train_payload(message.content, pack_arrays(weights, "bfloat16"), None)  # type: ignore[arg-type]
    reply = client_app.app(message, _context(images_dataset, data_dir))
    assert read_evaluate_reply(reply.content).num_examples == 0
    state = next(iter(client_app._cache.values()))
    assert state.eval_data is None and state.data.ref.episodes is None  # trains on all


def test_train_uses_federated_stats_and_replies_trainable_weights_only(
    images_dataset: DatasetRef, data_dir: Path
) -> None:
    config = _config(images_dataset, normalization="federated", learning_rate=1e-2)
    weights = _global_weights(data_dir, images_dataset)
    merged = task.open_dataset(images_dataset, chunk_size=4, owner="x").stats
    merged = {k: {s: np.asarray(v) * 1.0 for s, v in d.items()} for k, d in merged.items()}
    merged["observation.state"]["mean"] = merged["observation.state"]["mean"] + 0.5
    arrays = pack_arrays(weights, "bfloat16")  # type: ignore[arg-type]
    message = _message(config, MessageType.TRAIN)
    add_train_payload(message.content, arrays, stats_to_record(merged))
    reply = client_app.app(message, _context(images_dataset, data_dir))

    state = next(iter(client_app._cache.values()))
    assert np.allclose(
        state.bundle.stats["observation.state"]["mean"], merged["observation.state"]["mean"]
    )
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 2 * 4  # type: ignore[index]
    assert metrics["bytes-received"] == arrays.count_bytes()  # type: ignore[index]
    sent, _ = read_train_reply(reply.content)
    assert set(unpack_values(sent)) == set(weights)
    trained = unpack_arrays(sent, "bfloat16")
    assert any(not np.allclose(trained[k].numpy(), weights[k].numpy(), atol=1e-2) for k in weights)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kept", "steps_after"), [("fresh", [None, None]), ("kept", [2, 4])])
def test_a_client_keeps_its_adamw_in_its_context_only_when_the_experiment_says(
    images_dataset: DatasetRef, data_dir: Path, kept: str, steps_after: list[int | None]
) -> None:
    config = _config(images_dataset, optimizer_state=kept)
    arrays = pack_arrays(_global_weights(data_dir, images_dataset), "bfloat16")  # type: ignore[arg-type]
    context = _context(images_dataset, data_dir)
    steps: list[int | None] = []
    for server_round in (1, 2):
        message = _message(config, MessageType.TRAIN, server_round=server_round)
        add_train_payload(message.content, arrays, None)
        client_app.app(message, context)
        # The next round may reach another process (Ray hands clients to any actor): the state
        # travels in the node's context, not in this process.
        client_app._cache.clear()
        record = context.state.get(client_app.OPTIMIZER_STATE_KEY)
        steps.append(None if record is None else int(record["0.step"].numpy()))

    assert steps == steps_after


def test_a_clients_round_trains_on_the_same_batches_in_whichever_process_serves_it(
    images_dataset: DatasetRef, data_dir: Path
) -> None:
    """Ray hands a client to any free actor: its round 2 must not depend on whether the process
    that trains it served its round 1 (one that did continues its feed; one that did not builds
    a feed there)."""
    config = _config(images_dataset)
    arrays = pack_arrays(_global_weights(data_dir, images_dataset), "bfloat16")  # type: ignore[arg-type]

    def train(server_round: int) -> float:
        message = _message(config, MessageType.TRAIN, server_round=server_round)
        add_train_payload(message.content, arrays, None)
        reply = client_app.app(message, _context(images_dataset, data_dir))
        return read_train_reply(reply.content)[1].train_loss

    train(1)
    continued = train(2)  # the process that trained round 1
    client_app._cache.clear()
    client_app._policies.clear()
    elsewhere = train(2)  # a process new to this client

    assert elsewhere == continued


def test_weights_that_do_not_train_are_refused(images_dataset: DatasetRef, data_dir: Path) -> None:
    config = _config(images_dataset)
    weights = _global_weights(data_dir, images_dataset)
    weights["model.vlm_with_expert.vlm.lm_head.weight"] = weights[next(iter(weights))]
    message = _message(config, MessageType.TRAIN)
    add_train_payload(message.content, pack_arrays(weights, "bfloat16"), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="received weights that do not train"):
        client_app.app(message, _context(images_dataset, data_dir))


def test_one_process_keeps_every_client_of_the_run_shares_one_policy_and_frees_earlier_runs(
    images_dataset: DatasetRef, data_dir: Path
) -> None:
    """Ray hands one actor several clients in turn: none of them is rebuilt each round."""
    instructions = _instructions(_config(images_dataset), str(data_dir))

    def context(run_id: int, label: str) -> Context:
        base = _context(images_dataset, data_dir)
        node_config = {**base.node_config, "site-label": label}
        return Context(
            run_id=run_id, node_id=11, node_config=node_config, state=RecordDict(), run_config={}
        )

    first = client_app.client_state(instructions, context(7, "site-a"))
    second = client_app.client_state(instructions, context(7, "site-b"))
    assert client_app.client_state(instructions, context(7, "site-a")) is first
    assert client_app.client_state(instructions, context(7, "site-b")) is second
    assert len(client_app._cache) == 2
    # One policy for both (its memory does not grow with clients); processors of their own.
    assert first.bundle.policy is second.bundle.policy
    assert first.bundle.preprocessor is not second.bundle.preprocessor
    assert second.bundle.load_seconds == 0.0 < first.bundle.load_seconds

    # A later run of the same policy (a site's next run): nothing is rebuilt, but the feed starts
    # over and the processors normalise with the dataset's own statistics until the run's own.
    first.data.training_feed(2, seed=1, pin=False)
    task.set_stats(first.bundle, _shifted(first.data.stats))
    built = client_app.policies_built
    later = client_app.client_state(instructions, context(8, "site-a"))
    assert later is first and later.run_id == "8"
    assert later.data.feed is None and later.bundle.stats is later.data.stats
    assert client_app.policies_built == built and len(client_app._cache) == 2

    # Another policy (here: another seed, other frozen weights) frees the earlier clients.
    reseeded = _instructions(_config(images_dataset, seed=99), str(data_dir))
    other = client_app.client_state(reseeded, context(9, "site-a"))
    assert len(client_app._cache) == 1 and len(client_app._policies) == 1
    assert other.bundle.policy is not first.bundle.policy
    assert client_app.policies_built == built + 1


def _shifted(stats: task.Stats) -> task.Stats:
    return {key: {name: value + 1 for name, value in entry.items()} for key, entry in stats.items()}

"""The engine's parts on their own: tiny policy, loading, data checks, partitions, transport."""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord, RecordDict

from fedvla.core.experiment_config import DatasetRef, FederationConfig, Partition
from fedvla.engine.data.features import DatasetError, check_dataset
from fedvla.engine.data.partition import split_partition
from fedvla.engine.federation import task
from fedvla.engine.federation.protocol import ARRAYS_KEY, CONFIG_KEY, add_train_payload, read_packed
from fedvla.engine.federation.run_config import (
    federation_config_from_run_config,
    run_config_from_federation_config,
)
from fedvla.engine.federation.transport import (
    OutOfBandArray,
    array_values,
    decode_arrays,
    encode_arrays,
    pack_arrays,
    ray_carries_messages,
    to_array,
)
from fedvla.engine.policy.loading import (
    PolicySourceError,
    load_pretrained_fast,
    read_policy_config,
    resolve_policy_source,
    trainable_state,
)
from fedvla.engine.policy.tiny import SPECIAL_TOKENS, tiny_vlm_dir
from tests.engine.helpers import tiny_bundle


def test_tiny_vlm_is_generated_once_with_the_special_tokens(data_dir: Path) -> None:
    from transformers import AutoProcessor

    folder = tiny_vlm_dir(data_dir)
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert tiny_vlm_dir(data_dir) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    processor = AutoProcessor.from_pretrained(folder)
    for attribute, token in SPECIAL_TOKENS.items():
        assert getattr(processor.tokenizer, attribute) == token
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id


def test_hub_id_missing_from_the_cache_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(PolicySourceError, match="'nobody/no_such_policy' is not in the local"):
        resolve_policy_source("nobody/no_such_policy")


def test_pretrained_folder_whose_vlm_is_not_cached_names_the_vlm(
    data_dir: Path, images_dataset: DatasetRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    bundle, _ = tiny_bundle(data_dir, images_dataset)
    bundle.policy.save_pretrained(tmp_path / "policy")
    config_file = tmp_path / "policy" / "config.json"
    config = json.loads(config_file.read_text())
    config["vlm_model_name"] = "nobody/missing-vlm"
    config_file.write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PolicySourceError, match="'nobody/missing-vlm' is not in the local"):
        read_policy_config(resolve_policy_source(str(tmp_path / "policy")))


def test_folder_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicySourceError, match="not a pretrained_model folder"):
        resolve_policy_source(str(tmp_path))


def test_meta_device_load_matches_lerobot_from_pretrained(
    data_dir: Path, images_dataset: DatasetRef, tmp_path: Path
) -> None:
    from lerobot.policies.smolvla import SmolVLAPolicy

    bundle, data = tiny_bundle(data_dir, images_dataset)
    bundle.policy.save_pretrained(tmp_path)
    fast = load_pretrained_fast(
        read_policy_config(resolve_policy_source(str(tmp_path))), tmp_path / "model.safetensors"
    )
    plain = SmolVLAPolicy.from_pretrained(tmp_path)
    for name, buffer in plain.named_buffers():
        assert torch.equal(dict(fast.named_buffers())[name], buffer), name
    batch = bundle.preprocessor(next(iter(torch.utils.data.DataLoader(data.dataset, batch_size=2))))
    torch.manual_seed(0)
    fast_loss, _ = fast.forward(dict(batch))
    torch.manual_seed(0)
    plain_loss, _ = plain.forward(dict(batch))
    assert torch.allclose(fast_loss, plain_loss)


def test_only_action_expert_and_projections_train(
    data_dir: Path, images_dataset: DatasetRef
) -> None:
    bundle, _ = tiny_bundle(data_dir, images_dataset)
    trainable = trainable_state(bundle.policy)
    assert trainable and all(".vlm." not in key for key in trainable)
    assert sum(v.numel() for v in trainable.values()) < sum(
        p.numel() for p in bundle.policy.parameters()
    )
    assert not any("mean" in key or "std" in key for key in bundle.policy.state_dict())


def test_training_lowers_the_loss(data_dir: Path, images_dataset: DatasetRef) -> None:
    bundle, data = tiny_bundle(data_dir, images_dataset)
    before = task.evaluate(bundle, data, batches=2, batch_size=8, seed=1)
    result = task.train(bundle, data, steps=15, batch_size=8, learning_rate=3e-3, seed=0)
    after = task.evaluate(bundle, data, batches=2, batch_size=8, seed=1)
    assert result.samples == 15 * 8
    assert after.loss < before.loss
    assert after.samples == before.samples == 16


def test_action_mse_is_in_the_datas_units(data_dir: Path, images_dataset: DatasetRef) -> None:
    """The action error compares unnormalised actions: scaling the recorded actions (and so
    the statistics the policy normalises with) by k scales the error by k squared."""
    bundle, data = tiny_bundle(data_dir, images_dataset)
    plain = task.evaluate(bundle, data, batches=2, batch_size=8, seed=1)
    scale = 10.0
    stats = {k: dict(v) for k, v in data.stats.items()}
    stats["action"] = {
        name: (value * scale if name in ("mean", "std", "min", "max", "q01", "q99") else value)
        for name, value in stats["action"].items()
    }
    task.set_stats(bundle, stats)
    scaled_data = _ScaledActions(data, scale)
    scaled = task.evaluate(bundle, scaled_data, batches=2, batch_size=8, seed=1)  # type: ignore[arg-type]
    assert plain.action_mse > 0
    assert scaled.loss == pytest.approx(plain.loss, rel=1e-3)
    assert scaled.action_mse == pytest.approx(plain.action_mse * scale**2, rel=1e-3)


def test_fedprox_term_keeps_weights_closer(data_dir: Path, images_dataset: DatasetRef) -> None:
    drifts = []
    for mu in (0.0, 100.0):
        bundle, data = tiny_bundle(data_dir, images_dataset)
        start = {k: v.clone() for k, v in trainable_state(bundle.policy).items()}
        task.train(bundle, data, steps=5, batch_size=4, learning_rate=3e-3, seed=0, proximal_mu=mu)
        end = trainable_state(bundle.policy)
        drifts.append(sum(float(((end[k] - start[k]) ** 2).sum()) for k in start))
    assert drifts[1] < drifts[0]


def test_video_dataset_decodes(video_dataset: DatasetRef) -> None:
    data = task.open_dataset(video_dataset, chunk_size=4, owner="test")
    item = data.dataset[5]
    assert item["observation.images.front"].shape == (3, 24, 32)
    assert item["observation.images.wrist"].shape == (3, 24, 32)
    assert item["action"].shape == (4, 6)
    assert data.dataset.skipped == 0


def test_corrupt_video_frames_are_skipped_and_counted(
    video_dataset: DatasetRef, tmp_path: Path
) -> None:
    root = tmp_path / "corrupt"
    shutil.copytree(str(video_dataset.root), root)
    video = next((root / "videos" / "observation.images.front").rglob("*.mp4"))
    content = bytearray(video.read_bytes())
    middle = len(content) // 2
    content[middle : middle + len(content) // 4] = os.urandom(len(content) // 4)
    video.write_bytes(bytes(content))
    data = task.open_dataset(
        video_dataset.model_copy(update={"root": str(root)}), chunk_size=4, owner="c"
    )
    items = [data.dataset[i] for i in range(len(data.dataset))]
    assert len(items) == len(data.dataset)
    assert data.dataset.skipped > 0


@pytest.mark.parametrize(
    ("name", "changes", "mismatch"),
    [
        ("state5", {"state_dim": 5}, "state dim 5, expected 6"),
        ("two_cameras", {"cameras": ("front", "wrist")}, "cameras"),
        ("fps15", {"fps": 15}, "fps 15, expected 30"),
    ],
)
def test_mismatched_dataset_names_owner_dataset_and_mismatch(
    make_dataset, images_dataset: DatasetRef, name: str, changes: dict[str, object], mismatch: str
) -> None:  # type: ignore[no-untyped-def]
    expected = check_dataset(images_dataset, "client-0", None)
    odd = make_dataset(name, episodes=2, **changes)
    with pytest.raises(DatasetError) as raised:
        check_dataset(odd, "client-2", expected)
    message = str(raised.value)
    assert "client-2" in message and str(odd.root) in message and mismatch in message


def test_missing_dataset_is_named(tmp_path: Path) -> None:
    ref = DatasetRef(repo_id="site/arm", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"client-1: dataset site/arm at .*nowhere is missing"):
        check_dataset(ref, "client-1", None)


def test_iid_partition_deals_disjoint_episodes_and_holds_some_back(
    images_dataset: DatasetRef,
) -> None:
    partition = Partition(dataset=images_dataset, num_clients=3, holdout_episodes=2)
    clients, holdout = split_partition(partition, seed=0)
    shares = [set(c.episodes or []) for c in clients]
    held = set(holdout[0].episodes or [])
    assert len(held) == 2 and all(shares)
    assert set().union(*shares, held) == set(range(9))
    assert sum(len(s) for s in shares) + len(held) == 9


def test_task_partition_gives_each_client_whole_tasks(images_dataset: DatasetRef) -> None:
    partition = Partition(dataset=images_dataset, num_clients=3, scheme="task")
    clients, _ = split_partition(partition, seed=0)
    for client in clients:
        assert len({e % 3 for e in client.episodes or []}) == 1  # synthetic: task = episode % 3


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_transport_dtypes_round_trip(dtype: str) -> None:
    state = {"w": torch.linspace(-2, 2, 64).reshape(8, 8)}
    record = encode_arrays(state, dtype)
    back = decode_arrays(record, dtype)["w"]
    assert back.dtype == torch.float32
    assert torch.allclose(back, state["w"], atol=2e-2)
    assert record.count_bytes() >= (64 * 4 if dtype == "float32" else 64 * 2)
    if dtype != "float32":
        assert record.count_bytes() < encode_arrays(state, "float32").count_bytes()


@pytest.mark.parametrize(
    "values",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asarray(2.5, dtype=np.float32),
        np.arange(5),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(12.0).reshape(3, 4).T,
    ],
    ids=["float32", "scalar", "int64", "fortran", "transposed"],
)
def test_arrays_serialise_as_flower_does_and_read_back_without_a_copy(values: np.ndarray) -> None:
    ours, flowers = to_array(values), Array(values)
    assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
    np.testing.assert_array_equal(flowers.numpy(), values)
    np.testing.assert_array_equal(ours.numpy(), values)
    read = array_values(ours)
    np.testing.assert_array_equal(read, values)
    if values.flags.c_contiguous:
        assert ours.data == flowers.data
        assert not read.flags.writeable  # a view of the received bytes, not a copy


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_updates_pickle_their_bytes_out_of_band_for_ray(dtype: str) -> None:
    packed = pack_arrays({"w": torch.linspace(-1, 1, 4096), "b": torch.ones(3)}, dtype)
    wrapped = packed.out_of_band()
    assert type(wrapped.array) is OutOfBandArray and wrapped.array.data is packed.array.data
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(wrapped, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1 and len(stream) < 4096  # the values travel beside the stream
    back = pickle.loads(stream, buffers=buffers)
    assert type(back.array) is OutOfBandArray and back.layout == packed.layout
    assert back.array.data == packed.array.data and back.array.shape == packed.array.shape
    older = pickle.loads(pickle.dumps(wrapped, protocol=4))  # in band where 5 is not used
    assert older.array.data == packed.array.data
    content = RecordDict({CONFIG_KEY: ConfigRecord()})
    add_train_payload(content, wrapped, None)  # the message keeps it out of band
    assert type(read_packed(content, ARRAYS_KEY, "train message").array) is OutOfBandArray


@pytest.mark.slow
def test_arrays_go_out_of_band_only_where_ray_carries_them() -> None:
    import ray

    if ray.is_initialized():  # left over from an in-process simulation
        ray.shutdown()
    assert not ray_carries_messages()  # a SuperNode or SuperLink process: plain Arrays
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        assert ray_carries_messages()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_rounds_weights_go_into_rays_object_store_once_for_all_its_messages() -> None:
    import ray

    if ray.is_initialized():  # left over from an in-process simulation
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        packed = pack_arrays({"w": torch.linspace(-1, 1, 1 << 18), "b": torch.ones(3)}, "float32")
        shared = packed.in_object_store()
        assert shared.array.data is packed.array.data
        contents = [RecordDict({CONFIG_KEY: ConfigRecord()}) for _ in range(3)]
        for content in contents:  # one round's train messages, one per client
            add_train_payload(content, shared, None)
        serialise = ray._private.worker.global_worker.get_serialization_context().serialize
        serialised = [serialise(content) for content in contents]
        # each message carries a reference, not the values (1 MiB), and all the same one
        assert all(s.total_bytes < 64 * 1024 for s in serialised)
        assert len({ref for s in serialised for ref in s.contained_object_refs}) == 1

        @ray.remote
        def received(content: RecordDict) -> bytes:
            return bytes(read_packed(content, ARRAYS_KEY, "train message").array.data)

        assert ray.get([received.remote(c) for c in contents]) == [packed.array.data] * 3
    finally:
        ray.shutdown()
    older = pickle.loads(pickle.dumps(shared.array, protocol=5))  # no Ray: the bytes themselves
    assert older.data == packed.array.data


def test_run_config_round_trips(images_dataset: DatasetRef) -> None:
    config = FederationConfig(
        policy="tiny", partition=Partition(dataset=images_dataset, num_clients=2)
    )
    run_config = run_config_from_federation_config(config)
    assert run_config["local-steps"] == config.local_steps
    assert federation_config_from_run_config(run_config) == config


def test_merged_stats_weight_by_count(images_dataset: DatasetRef, make_dataset) -> None:  # type: ignore[no-untyped-def]
    other = make_dataset("other_seed", episodes=3, seed=7)
    first = task.open_dataset(images_dataset, chunk_size=4, owner="a").stats
    second = task.open_dataset(other, chunk_size=4, owner="b").stats
    merged = task.merge_stats([first, second])
    mean = merged["observation.state"]["mean"]
    assert np.all(
        mean
        >= np.minimum(first["observation.state"]["mean"], second["observation.state"]["mean"])
        - 1e-6
    )
    assert np.all(
        mean
        <= np.maximum(first["observation.state"]["mean"], second["observation.state"]["mean"])
        + 1e-6
    )


class _ScaledActions:
    """A client's data whose recorded actions are multiplied by `scale` (other units)."""

    def __init__(self, data: task.ClientData, scale: float) -> None:
        self.camera_keys = data.camera_keys
        self.dataset = _Scaled(data.dataset, scale)


class _Scaled(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, dataset: torch.utils.data.Dataset, scale: float) -> None:  # type: ignore[type-arg]
        self.inner, self.scale = dataset, scale

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:  # type: ignore[type-arg]
        item = dict(self.inner[index])
        item["action"] = item["action"] * self.scale
        return item

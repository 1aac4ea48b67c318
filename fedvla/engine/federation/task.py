"""All the machine learning of the federation: no Flower app API here.

Build a SmolVLA and its lerobot processors for a dataset, train it for some local steps
(optionally with FedProx's proximal term), and measure its loss on held-out data.
"""

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fedvla.core.experiment_config import DatasetRef
from fedvla.engine.data.features import ACTION_KEY, STATE_KEY, DatasetError, describe
from fedvla.engine.data.loader import Feed, frames_to_float, loader_workers
from fedvla.engine.data.stats import Stats, frame_stats
from fedvla.engine.federation.schedule import LearningRateSchedule
from fedvla.engine.policy.loading import PolicySource, build_policy, trainable_state
from fedvla.engine.policy.speed import flow_loss, hold_frozen_in_bf16

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.smolvla import SmolVLAPolicy
    from lerobot.processor import PolicyProcessorPipeline

logger = logging.getLogger(__name__)

NORMALIZED_KEYS = (STATE_KEY, ACTION_KEY)
"""Features whose statistics the policy uses (SmolVLA leaves images unnormalised)."""


def round_seed(seed: int, server_round: int, label: str) -> int:
    """A seed per experiment, round and client, the same in every process."""
    digest = hashlib.sha256(f"{seed}|{server_round}|{label}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def client_seed(seed: int, label: str) -> int:
    """A seed per experiment and client for the whole run (round 0's: no round trains there)."""
    return round_seed(seed, 0, label)


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class SkippingDataset(Dataset[dict[str, Any]]):
    """A LeRobotDataset whose unreadable frames (a corrupt video frame) are skipped and counted."""

    def __init__(self, dataset: "LeRobotDataset") -> None:
        self.dataset = dataset
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.dataset)):
            position = (index + attempt) % len(self.dataset)
            try:
                item: dict[str, Any] = self.dataset[position]
                return item
            except Exception as error:  # decoders raise many kinds for a bad frame
                self.skipped += 1
                logger.warning("skipped unreadable frame %d: %s", position, error)
        raise DatasetError(f"every frame of {self.dataset.repo_id} is unreadable")


@dataclass
class ClientData:
    ref: DatasetRef
    dataset: SkippingDataset
    stats: Stats
    """Statistics of the normalised features over exactly these frames (its episodes only);
    empty for data opened only to evaluate on."""
    feed: Feed | None = None
    """The training batches, kept across rounds (built by the first call of train)."""
    last_fed: float = 0.0
    """When training last took batches from the feed (time.monotonic)."""

    @property
    def camera_keys(self) -> list[str]:
        return list(self.dataset.dataset.meta.camera_keys)

    def training_feed(self, batch_size: int, seed: int, *, pin: bool) -> Feed:
        """The client's feed for this batch size, its order seeded by `seed` when built."""
        self.last_fed = time.monotonic()
        if self.feed is None or self.feed.batch_size != batch_size:
            self.close()
            self.feed = Feed(
                self.dataset, batch_size=batch_size, seed=seed, workers=loader_workers(), pin=pin
            )
        return self.feed

    def close(self) -> None:
        """Stop the feed's worker processes."""
        if self.feed is not None:
            self.feed.close()
            self.feed = None

    @property
    def episodes(self) -> int:
        return len(self.ref.episodes) if self.ref.episodes is not None else self.meta_episodes

    @property
    def meta_episodes(self) -> int:
        return int(self.dataset.dataset.meta.total_episodes)

    @property
    def features(self) -> dict[str, Any]:
        """The dataset's feature descriptions (lerobot's info.json "features"), JSON-safe."""
        return json.loads(json.dumps(self.dataset.dataset.meta.features))


def open_dataset(
    ref: DatasetRef, *, chunk_size: int, owner: str, with_stats: bool = True
) -> ClientData:
    """Open a LeRobotDataset returning action chunks of the policy's length.

    Video frames come as uint8 (as lerobot-train reads them); frames_to_float makes them floats
    once they are on the device. With `with_stats`, the normalised features' statistics are
    computed from the frames of `ref`'s episodes, never read from the dataset's meta/stats.json
    (which covers every episode, held-out ones included).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        dataset = LeRobotDataset(
            ref.repo_id,
            root=ref.root,
            episodes=ref.episodes,
            delta_timestamps=None,
        )
        fps = dataset.meta.fps
        dataset = LeRobotDataset(
            ref.repo_id,
            root=ref.root,
            episodes=ref.episodes,
            delta_timestamps={ACTION_KEY: [i / fps for i in range(chunk_size)]},
            return_uint8=True,
        )
    except Exception as error:
        raise DatasetError(
            f"{owner}: dataset {describe(ref)} is unreadable: {type(error).__name__}: {error}"
        ) from error
    stats = frame_stats(dataset, NORMALIZED_KEYS) if with_stats else {}
    return ClientData(ref, SkippingDataset(dataset), stats)


def merge_stats(stats: list[Stats]) -> Stats:
    """Federated statistics: lerobot's merge of every client's statistics, weighted by their
    frame counts (mean and variance exact, quantiles count-weighted)."""
    from lerobot.datasets.compute_stats import aggregate_stats

    merged: Stats = aggregate_stats(stats)
    return merged


@dataclass
class PolicyBundle:
    """A policy with the processors that feed it, normalising with `stats`."""

    policy: "SmolVLAPolicy"
    preprocessor: "PolicyProcessorPipeline[dict[str, Any], dict[str, Any]]"
    postprocessor: "PolicyProcessorPipeline[Any, Any]"
    stats: Stats
    device: str
    load_seconds: float = 0.0


def policy_features(dataset_features: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from lerobot.configs import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    features = dataset_to_policy_features(dataset_features)
    inputs = {k: f for k, f in features.items() if f.type is not FeatureType.ACTION}
    outputs = {k: f for k, f in features.items() if f.type is FeatureType.ACTION}
    return inputs, outputs


def build_bundle(
    source: PolicySource,
    dataset_features: dict[str, Any],
    *,
    stats: Stats,
    data_dir: Path,
    seed: int,
    device: str,
) -> PolicyBundle:
    inputs, outputs = policy_features(dataset_features)
    loaded = build_policy(
        source,
        data_dir=data_dir,
        input_features=inputs,
        output_features=outputs,
        seed=seed,
        device=device,
    )
    bundle = ready_to_train(loaded.policy, stats, device)
    bundle.load_seconds = loaded.seconds
    return bundle


def ready_to_train(policy: "SmolVLAPolicy", stats: Stats, device: str) -> PolicyBundle:
    """A newly built policy on `device`, its frozen weights held in bf16 where the GPU has it."""
    if device == "cuda" and torch.cuda.is_bf16_supported():
        hold_frozen_in_bf16(policy)
    return bundle_for(policy, stats, device)


def bundle_for(policy: "SmolVLAPolicy", stats: Stats, device: str) -> PolicyBundle:
    """A policy (maybe shared with other clients) with processors normalising with `stats`."""
    return PolicyBundle(policy, *_processors(policy, stats), stats, device)


def set_stats(bundle: PolicyBundle, stats: Stats) -> None:
    """Normalise with other statistics (the federated merge)."""
    bundle.preprocessor, bundle.postprocessor = _processors(bundle.policy, stats)
    bundle.stats = stats


def _processors(policy: "SmolVLAPolicy", stats: Stats) -> tuple[Any, Any]:
    from lerobot.policies.smolvla import make_smolvla_pre_post_processors

    return make_smolvla_pre_post_processors(policy.config, dataset_stats=stats)


def load_trainable(bundle: PolicyBundle, state: dict[str, torch.Tensor]) -> None:
    """Copy received trainable weights into the policy; refuse anything else."""
    params = dict(bundle.policy.named_parameters())
    unknown = [k for k in state if k not in params or not params[k].requires_grad]
    if unknown:
        raise ValueError(f"received weights that do not train: {unknown[:5]}")
    missing = [k for k, p in params.items() if p.requires_grad and k not in state]
    if missing:
        raise ValueError(f"received no weights for {missing[:5]}")
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value.to(params[key].dtype))


@dataclass
class TrainResult:
    loss: float
    samples: int
    steps: int
    seconds: float
    skipped_frames: int
    losses: list[float] = field(default_factory=list)
    learning_rate: float = 0.0
    """The learning rate of the last step."""
    optimizer_state: dict[str, torch.Tensor] = field(default_factory=dict)
    """AdamW's state after the last step (its moments and step count), flat: see adamw_state."""


def _autocast(device: str) -> Any:
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train(
    bundle: PolicyBundle,
    data: ClientData,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float | LearningRateSchedule,
    seed: int,
    proximal_mu: float = 0.0,
    first_step: int = 0,
    optimizer_state: dict[str, torch.Tensor] | None = None,
    order_seed: int | None = None,
    first_batch: int | None = None,
) -> TrainResult:
    """Local training: `steps` gradient steps; FedProx's proximal term when mu > 0.

    AdamW starts fresh, or from `optimizer_state` (the state a previous call's result carries,
    for the same trainable parameters); the result carries the state it ends with.

    The learning rate is constant, or follows the federation's schedule from global step
    `first_step` (fedvla.engine.federation.schedule). Batches come from the client's feed, which
    lasts across rounds: its order is seeded by `order_seed` (default `seed`) when the first call
    builds it, and training starts at its batch `first_batch` (default: where the last call left
    it). The noise the flow-matching loss draws is seeded by `seed`. Nothing reads the GPU back
    until the last step.
    """
    schedule = (
        learning_rate
        if isinstance(learning_rate, LearningRateSchedule)
        else LearningRateSchedule.constant(learning_rate)
    )
    policy = bundle.policy
    started = time.perf_counter()
    skipped_before = data.dataset.skipped
    trainable = [p for p in policy.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trainable] if proximal_mu > 0 else []
    optimizer = torch.optim.AdamW(
        trainable,
        lr=schedule.at(first_step),
        betas=policy.config.optimizer_betas,
        eps=policy.config.optimizer_eps,
        weight_decay=policy.config.optimizer_weight_decay,
        fused=bundle.device == "cuda",
    )
    if optimizer_state:
        optimizer.load_state_dict({**optimizer.state_dict(), "state": _nested(optimizer_state)})
    policy.train()
    feed = data.training_feed(
        batch_size, seed if order_seed is None else order_seed, pin=bundle.device == "cuda"
    )
    if first_batch is not None:
        feed.seek(first_batch)
    step_losses: list[torch.Tensor] = []
    samples = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(first_step, first_step + steps):
            for group in optimizer.param_groups:
                group["lr"] = schedule.at(step)
            batch = frames_to_float(bundle.preprocessor(feed.next()), data.camera_keys)
            with _autocast(bundle.device):
                loss = flow_loss(policy, batch)
            if proximal_mu > 0:
                drift = sum(((p - a) ** 2).sum() for p, a in zip(trainable, anchor, strict=True))
                loss = loss + proximal_mu / 2 * drift
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, policy.config.optimizer_grad_clip_norm)
            optimizer.step()
            step_losses.append(loss.detach())
            samples += int(batch[STATE_KEY].shape[0])
    losses = [float(v) for v in torch.stack(step_losses).float().cpu()]
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"training diverged: losses {losses}")
    return TrainResult(
        loss=float(np.mean(losses)),
        samples=samples,
        steps=steps,
        seconds=time.perf_counter() - started,
        skipped_frames=data.dataset.skipped - skipped_before,
        losses=losses,
        learning_rate=float(optimizer.param_groups[0]["lr"]),
        optimizer_state=_flat(optimizer.state_dict()["state"]),
    )


def _flat(state: dict[int, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as one flat dict of tensors ("<index>.<name>"), the
    shape a Flower ArrayRecord holds."""
    return {
        f"{index}.{name}": value for index, entry in state.items() for name, value in entry.items()
    }


def _nested(flat: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return state


@dataclass(frozen=True)
class EvalResult:
    loss: float
    """The mean flow-matching loss (the training objective, in normalised units)."""
    action_mse: float
    """Mean squared error of the sampled action chunks against the recorded ones, in the
    dataset's own units (unnormalised; padded steps past an episode's end left out)."""
    samples: int


@torch.no_grad()
def evaluate(
    bundle: PolicyBundle, data: ClientData, *, batches: int, batch_size: int, seed: int
) -> EvalResult:
    """The loss and action error on `batches` held-out batches, with seeded noise: comparable
    from round to round and between runs."""
    policy = bundle.policy
    policy.eval()
    losses: list[float] = []
    squared, counted = 0.0, 0
    samples = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loader = DataLoader(
            data.dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        for index, raw in enumerate(loader):
            if index >= batches:
                break
            recorded = raw[ACTION_KEY].float().clone()
            padded = raw.get("action_is_pad")
            batch = frames_to_float(bundle.preprocessor(raw), data.camera_keys)
            with _autocast(bundle.device):
                loss = flow_loss(policy, batch)
            # The sampled chunk draws its noise from a stream of its own: the losses stay those
            # of the same noise, whether or not the action error is measured beside them.
            with torch.random.fork_rng(devices=[]), _autocast(bundle.device):
                torch.manual_seed(seed + 1 + index)
                chunk = policy.predict_action_chunk(batch)
            losses.append(float(loss))
            predicted = bundle.postprocessor(chunk.float()).float().cpu()
            error = (predicted[:, : recorded.shape[1]] - recorded) ** 2
            valid = torch.ones(error.shape[:2], dtype=torch.bool)
            if padded is not None:
                valid = ~padded.bool()
            squared += float(error[valid].sum())
            counted += int(valid.sum()) * error.shape[-1]
            samples += int(batch[STATE_KEY].shape[0])
    return EvalResult(
        loss=float(np.mean(losses)), action_mse=squared / max(counted, 1), samples=samples
    )


def trainable_arrays(bundle: PolicyBundle) -> dict[str, torch.Tensor]:
    return trainable_state(bundle.policy)

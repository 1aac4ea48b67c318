"""Resolve a policy source and build a SmolVLA from it, as fast as the engine allows.

A source is "tiny" (the built-in test policy), a hub id read from the local Hugging Face cache,
or a local pretrained_model folder. Pretrained weights are loaded by constructing the policy on
the meta device and assigning the safetensors tensors in place, which skips the random
initialisation of hundreds of millions of parameters; the non-persistent buffers that a state
dict does not hold (rotary tables) are rebuilt afterwards.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fedvla.core.experiment_config import TINY_POLICY
from fedvla.engine.policy.tiny import tiny_smolvla_config

if TYPE_CHECKING:
    from lerobot.configs import PolicyFeature
    from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class PolicySourceError(ValueError):
    """The policy source cannot be found or read."""


@dataclass(frozen=True)
class PolicySource:
    """A resolved source: the tiny policy (folder None) or a pretrained_model folder."""

    name: str
    folder: Path | None

    @property
    def is_tiny(self) -> bool:
        return self.folder is None


@dataclass
class LoadedPolicy:
    policy: "SmolVLAPolicy"
    seconds: float
    """Wall time spent constructing the policy and loading its weights."""


def resolve_policy_source(source: str) -> PolicySource:
    """Find the folder behind a source, offline; raise PolicySourceError naming it if absent."""
    if source == TINY_POLICY:
        return PolicySource(source, None)
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / CONFIG_FILE).is_file() or not (local / WEIGHTS_FILE).is_file():
            raise PolicySourceError(
                f"policy folder {source!r} is not a pretrained_model folder "
                f"(needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        return PolicySource(source, local)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise PolicySourceError(f"policy {source!r}: no such folder and not a hub id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(source, local_files_only=True)
    except LocalEntryNotFoundError as error:
        raise PolicySourceError(
            f"{source!r} is not in the local Hugging Face cache; download it on a machine "
            "with access to the hub (hf download) or give a local folder"
        ) from error
    return PolicySource(source, Path(folder))


def read_policy_config(source: PolicySource) -> "SmolVLAConfig":
    """The config stored with a pretrained policy, its VLM backbone resolved offline.

    The VLM's weights are never loaded from the hub: model.safetensors holds all of them. A VLM
    named by a relative path (a checkpoint's own ``./vlm``) is found in the source's folder.
    """
    from lerobot.policies.smolvla import SmolVLAConfig

    assert source.folder is not None
    config = SmolVLAConfig.from_pretrained(source.folder)
    config.load_vlm_weights = False
    carried = source.folder / config.vlm_model_name
    if config.vlm_model_name.startswith(".") and carried.is_dir():
        config.vlm_model_name = str(carried.resolve())
    elif not Path(config.vlm_model_name).is_dir():
        # transformers reads it from the cache by its id; the id stays in saved checkpoints.
        resolve_policy_source(config.vlm_model_name)
    return config


def build_policy(
    source: PolicySource,
    *,
    data_dir: Path,
    input_features: "dict[str, PolicyFeature]",
    output_features: "dict[str, PolicyFeature]",
    seed: int,
    device: str = "cpu",
) -> LoadedPolicy:
    """A SmolVLA for these features: the tiny one seeded, or pretrained weights assigned."""
    from lerobot.policies.smolvla import SmolVLAPolicy

    started = time.perf_counter()
    if source.is_tiny:
        state_dim = input_features["observation.state"].shape[0]
        action_dim = output_features["action"].shape[0]
        config = tiny_smolvla_config(data_dir, state_dim=state_dim, action_dim=action_dim)
        config.input_features = dict(input_features)
        config.output_features = dict(output_features)
        config.device = device
        # Every process must build the same frozen VLM: the frozen weights never travel.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            policy = SmolVLAPolicy(config)
    else:
        config = read_policy_config(source)
        config.device = device
        assert source.folder is not None
        policy = load_pretrained_fast(config, source.folder / WEIGHTS_FILE)
    policy.to(device)
    return LoadedPolicy(policy, time.perf_counter() - started)


def load_pretrained_fast(config: "SmolVLAConfig", weights: Path) -> "SmolVLAPolicy":
    """Construct on the meta device, assign the safetensors tensors, rebuild lost buffers."""
    from lerobot.policies.smolvla import SmolVLAPolicy
    from safetensors.torch import load_file

    with torch.device("meta"):
        policy = SmolVLAPolicy(config)
    state = load_file(weights, device="cpu")
    missing, unexpected = policy.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise PolicySourceError(f"{weights}: unexpected tensors {sorted(unexpected)[:5]}")
    if missing:
        raise PolicySourceError(f"{weights}: missing tensors {sorted(missing)[:5]}")
    rebuild_non_persistent_buffers(policy)
    return policy


def rebuild_non_persistent_buffers(model: torch.nn.Module) -> None:
    """Recreate buffers left on the meta device (they are not in any state dict)."""
    for name, module in model.named_modules():
        stale = [
            key
            for key, buffer in module.named_buffers(recurse=False)
            if buffer is not None and buffer.is_meta
        ]
        if not stale:
            continue
        module_config = getattr(module, "config", None)
        if module_config is None:
            raise PolicySourceError(f"cannot rebuild buffers {stale} of {name or 'the model'}")
        fresh = type(module)(module_config)
        for key in stale:
            setattr(module, key, getattr(fresh, key))
        for attribute in ("attention_scaling",):
            if hasattr(fresh, attribute):
                setattr(module, attribute, getattr(fresh, attribute))


def trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train: what crosses the wire. Frozen VLM weights never do."""
    return {
        name: parameter.detach()
        for name, parameter in policy.named_parameters()
        if parameter.requires_grad
    }

"""What can be checked of an experiment without a GPU, before any run starts.

Every check reads small files only (a dataset's ``meta/info.json``, a cache's folder names), so
the whole set takes milliseconds; the web process imports neither lerobot nor torch for it. The
worker reads the same datasets and checks them again before training (fedvla.engine.data.features,
fedvla.engine.data.partition, fedvla.engine.policy.loading): these checks answer first, the worker's
remain the second line.

Paths are read on the machine that answers the request: the web app and its workers must see
datasets at the same absolute paths, and share the Hugging Face cache (docker-compose.yml gives
both ``HF_HOME`` on the shared data volume). A hub dataset named without a root is read, as
lerobot reads it offline, from ``$HF_LEROBOT_HOME/<repo_id>`` (default ``$HF_HOME/lerobot``); a
hub policy from the Hugging Face hub cache (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvla.core.errors import FieldProblem
from fedvla.core.experiment_config import TINY_POLICY, DatasetRef, FederationConfig, Mode
from fedvla.core.models import SiteFeatures
from fedvla.core.services import compatibility

INFO_FILE = Path("meta") / "info.json"
DATASET_FORMAT = "v3"
"""The LeRobot dataset format the engine's lerobot (0.6) reads."""
POLICY_FILES = ("config.json", "model.safetensors")


def hf_home() -> Path:
    """Hugging Face's home folder, resolved as huggingface_hub resolves it."""
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface"


def lerobot_home() -> Path:
    """Where lerobot reads a dataset given by repo id only (``HF_LEROBOT_HOME``)."""
    if home := os.environ.get("HF_LEROBOT_HOME"):
        return Path(home).expanduser()
    return hf_home() / "lerobot"


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloaded models (``HF_HUB_CACHE``)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    return hf_home() / "hub"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset's meta/info.json says that a split and a comparison need."""

    total_episodes: int
    total_tasks: int
    robot_type: str
    features: SiteFeatures


class _Unusable(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.problem = FieldProblem(field=field, reason=reason)


def _dataset_folder(ref: DatasetRef, field: str) -> Path:
    if ref.root is None:
        folder = lerobot_home() / ref.repo_id
        if not (folder / INFO_FILE).is_file():
            raise _Unusable(
                f"{field}.repo_id",
                f"dataset {ref.repo_id!r} is not in the local LeRobot cache ({lerobot_home()}); "
                f"fix: download it there (hf download {ref.repo_id} --repo-type dataset "
                f"--local-dir {folder}) or give its local folder as root",
            )
        return folder
    root = Path(ref.root)
    if not root.is_absolute():
        raise _Unusable(
            f"{field}.root",
            f"{ref.root!r} is a relative path, which the worker would resolve against its own "
            "working directory; fix: give the dataset's absolute path",
        )
    if not root.is_dir():
        raise _Unusable(
            f"{field}.root",
            f"no folder {ref.root} on this server; fix: put the dataset there (where the "
            "workers read it too) or correct the path",
        )
    if not (root / INFO_FILE).is_file():
        raise _Unusable(
            f"{field}.root",
            f"{ref.root} is not a LeRobot dataset (no {INFO_FILE}); fix: give the folder that "
            "holds meta/, data/ and videos/",
        )
    return root


def _features(info: dict[str, Any]) -> SiteFeatures:
    features: dict[str, Any] = info["features"]
    cameras = {
        key: spec for key, spec in features.items() if spec.get("dtype") in ("video", "image")
    }
    return SiteFeatures(
        state_dim=int(features["observation.state"]["shape"][0]),
        action_dim=int(features["action"]["shape"][0]),
        state_names=list(features["observation.state"].get("names") or []),
        action_names=list(features["action"].get("names") or []),
        camera_keys=sorted(cameras),
        camera_resolutions={key: list(spec["shape"][:2]) for key, spec in cameras.items()},
        fps=int(info["fps"]),
    )


def read_dataset(ref: DatasetRef, field: str) -> DatasetInfo:
    """The dataset's info; _Unusable naming ``field`` if it cannot be found or read."""
    folder = _dataset_folder(ref, field)
    where = f"{field}.root" if ref.root is not None else f"{field}.repo_id"
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        version = str(info.get("codebase_version", "?"))
        if not version.startswith(DATASET_FORMAT):
            raise _Unusable(
                where,
                f"dataset {ref.repo_id!r} is in LeRobot format {version}, the engine reads "
                f"{DATASET_FORMAT}.x; fix: convert it with lerobot's "
                "lerobot.datasets.v30.convert_dataset_v21_to_v30",
            )
        for key in ("observation.state", "action"):
            if key not in info["features"]:
                raise _Unusable(where, f"dataset {ref.repo_id!r} has no {key!r} feature")
        return DatasetInfo(
            total_episodes=int(info["total_episodes"]),
            total_tasks=int(info.get("total_tasks", 0)),
            robot_type=str(info.get("robot_type") or "unknown"),
            features=_features(info),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise _Unusable(
            where, f"dataset {ref.repo_id!r}: meta/info.json is unreadable ({type(error).__name__})"
        ) from None


def _check_episodes(ref: DatasetRef, info: DatasetInfo, field: str) -> None:
    if ref.episodes is None:
        return
    if not ref.episodes:
        raise _Unusable(f"{field}.episodes", "no episodes listed; fix: list some, or omit it")
    outside = sorted({e for e in ref.episodes if e >= info.total_episodes})
    if outside:
        raise _Unusable(
            f"{field}.episodes",
            f"dataset {ref.repo_id!r} has no episodes {outside} (it has {info.total_episodes}, "
            f"numbered 0 to {info.total_episodes - 1})",
        )


def _check_partition(config: FederationConfig, info: DatasetInfo) -> None:
    assert config.partition is not None
    partition = config.partition
    ref = partition.dataset
    available = len(set(ref.episodes)) if ref.episodes is not None else info.total_episodes
    needed = partition.num_clients + partition.holdout_episodes
    if available < needed:
        # The field to change: the hold-out when the clients alone would fit (it is 1 by
        # default, so a user who never set it learns what it is and how to turn it off).
        held_out = available >= partition.num_clients
        raise _Unusable(
            "partition.holdout_episodes" if held_out else "partition.num_clients",
            f"dataset {ref.repo_id!r} has {available} episodes, the split needs at least "
            f"{needed} ({partition.num_clients} clients + {partition.holdout_episodes} held "
            "out for the server's evaluation); fix: "
            + (
                f"holdout_episodes at most {available - partition.num_clients} (0: the server "
                "evaluates only on eval_datasets), fewer clients, or more episodes"
                if held_out
                else "fewer clients or held-out episodes, or more episodes"
            ),
        )
    if partition.scheme == "task" and info.total_tasks < partition.num_clients:
        raise _Unusable(
            "partition.scheme",
            f"dataset {ref.repo_id!r} has {info.total_tasks} tasks, too few to give each of "
            f"{partition.num_clients} clients its own; fix: scheme 'iid' or at most "
            f"{info.total_tasks} clients",
        )


def _datasets(config: FederationConfig) -> list[tuple[str, DatasetRef]]:
    """Every dataset the engine will read, with the field that names it; clients first."""
    named: list[tuple[str, DatasetRef]] = []
    if config.mode == Mode.simulation:
        if config.partition is not None:
            named.append(("partition.dataset", config.partition.dataset))
        named += [(f"client_datasets.{i}", ref) for i, ref in enumerate(config.client_datasets)]
    named += [(f"eval_datasets.{i}", ref) for i, ref in enumerate(config.eval_datasets)]
    return named


def _mismatches(
    field: str, info: DatasetInfo, reference: tuple[str, DatasetInfo]
) -> list[FieldProblem]:
    """How a dataset differs from the first one. Simulation has no camera map: a camera a site
    could map (a warning for compatibility) must be renamed in the dataset here."""
    first_field, first = reference
    found = compatibility.compare(info.features, info.robot_type, first.features, first.robot_type)
    mapping = compatibility.camera_mapping(info.features, first.features)
    problems = []
    for mismatch in found:
        if mismatch.severity == "error":
            fix = mismatch.fix
        elif mismatch.feature == "camera_keys":
            fix = f"rename the dataset's camera {mismatch.found!r} to {mapping[mismatch.found]!r}"
        else:
            continue
        reason = f"{mismatch.reason} (compared with {first_field}); fix: {fix}"
        problems.append(FieldProblem(field=field, reason=reason))
    return problems


def _policy_problem(source: str) -> FieldProblem | None:
    if source == TINY_POLICY:
        return None
    local = Path(source).expanduser()
    if source.startswith((".", "/", "~")) or local.is_dir():
        if not local.is_absolute():
            return FieldProblem(
                field="policy",
                reason=f"{source!r} is a relative path; fix: give the folder's absolute path",
            )
        missing = [name for name in POLICY_FILES if not (local / name).is_file()]
        if missing:
            return FieldProblem(
                field="policy",
                reason=f"no pretrained_model folder at {source} (missing {', '.join(missing)}); "
                "fix: give the folder that holds config.json and model.safetensors",
            )
        return None
    if source.count("/") != 1:
        return FieldProblem(
            field="policy",
            reason=f"{source!r} is neither a hub id (owner/name) nor an absolute folder, nor "
            f"{TINY_POLICY!r}",
        )
    cached = hub_cache() / f"models--{source.replace('/', '--')}"
    ref = cached / "refs" / "main"
    if not ref.is_file() or not (cached / "snapshots" / ref.read_text().strip()).is_dir():
        return FieldProblem(
            field="policy",
            reason=f"{source!r} is not in the local Hugging Face cache ({hub_cache()}); fix: "
            f"run 'hf download {source}' where the server and workers share that cache, or "
            "give a local pretrained_model folder",
        )
    return None


def _unreadable(error: OSError | ValueError) -> str:
    why = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error)
    return f"not a path this server can look up ({why.lower()}); fix: give a shorter, plain path"


def problems(config: FederationConfig) -> list[FieldProblem]:
    """Everything about the experiment's policy and data that would stop it on the worker,
    each naming its field and the fix; empty when none is found."""
    found: list[FieldProblem] = []
    try:
        policy = _policy_problem(config.policy)
    except (OSError, ValueError) as error:  # a name no file system takes: too long, a NUL
        policy = FieldProblem(field="policy", reason=_unreadable(error))
    if policy is not None:
        found.append(policy)
    reference: tuple[str, DatasetInfo] | None = None
    for field, ref in _datasets(config):
        try:
            info = read_dataset(ref, field)
            _check_episodes(ref, info, field)
            if field == "partition.dataset":
                _check_partition(config, info)
        except _Unusable as unusable:
            found.append(unusable.problem)
            continue
        except (OSError, ValueError) as error:
            found.append(FieldProblem(field=field, reason=_unreadable(error)))
            continue
        if reference is None:
            reference = (field, info)
        else:
            found += _mismatches(field, info, reference)
    return found
